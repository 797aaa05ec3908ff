//! TLSRPT (RFC 8460): the reporting half of MTA-STS. Postfix (3.10 and later, built
//! with libtlsrpt) sends one datagram per delivery attempt to a domain that publishes
//! a `_smtp._tls` record; the daemon counts them and, after each UTC day, sends each
//! such domain the report its record asks for.
//!
//! The rooms, from the bottom up:
//! - [`day`]: UTC days and the date forms reports and mail use (pure);
//! - [`datagram`]: libtlsrpt's datagram, parsed strictly (pure);
//! - [`record`]: the TLSRPT record and its `rua` destinations, refused when unsafe
//!   (pure);
//! - [`known`]: sessions Postfix reports under no policy that were policy failures
//!   mta-stsd knows of (pure);
//! - [`counts`]: the counters datagrams become (pure);
//! - [`period`]: the stretches of a day its reports cover, closed early by a
//!   partial send (pure);
//! - [`report`]: the RFC 8460 §4 report made from counters (pure);
//! - [`mail`]: the §5.3 message that carries a report by mail (pure);
//! - [`store`]: the counters and delivery records on disk;
//! - [`salvage`]: opening that store, noticing and salvaging a damaged one;
//! - [`smtp`]: handing a mailed report to the local MTA by SMTP;
//! - [`deliver`]: sending one report to one destination (HTTPS, SMTP, a sendmail
//!   program);
//! - [`ledger`]: where counters are read and deliveries recorded and leased: this
//!   daemon's store, or the fleet's Redis;
//! - [`schedule`]: which deliveries are due, and their retries (pure);
//! - [`collector`]: Postfix's datagrams into counters, stored within a second;
//! - [`sender`]: the daily reports to their destinations;
//! - [`socket`]: the collector's unix datagram socket.

pub mod collector;
pub mod counts;
pub mod datagram;
pub mod day;
pub mod deliver;
pub mod known;
pub mod ledger;
pub mod mail;
pub mod period;
pub mod record;
pub mod report;
pub mod salvage;
pub mod schedule;
pub mod sender;
pub mod smtp;
pub mod socket;
pub mod store;
