//! The policy cache: what is known about a domain ([`entry`]), the rules that govern
//! an entry's life (RFC 8461 §3.3, §5.1, §10.2) as pure functions ([`lifecycle`]), the
//! service that applies them around discovery ([`policy_cache`]) and its components (what
//! memory holds: [`hot`]; durability and checkpoints: [`durability`]; walks of the
//! store: [`survey`]; the refresher: [`refresher`]; the fleet's steps: [`fleet`]; logs
//! and metrics: [`events`]), the persistent store ([`store`]), and the cache a fleet of
//! daemons shares in Redis ([`redis_cache`]).

pub mod durability;
pub mod entry;
pub mod events;
pub mod fleet;
pub mod hot;
pub mod lifecycle;
pub mod policy_cache;
pub mod redis_cache;
pub mod refresher;
pub mod store;
pub mod survey;
