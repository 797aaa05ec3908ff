use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use time::{Duration, OffsetDateTime};

/// What kind of server certificate to issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKind {
    /// Valid, for the requested names, from the test CA.
    Valid,
    /// From the test CA, but for a different name.
    WrongName,
    /// From the test CA, for the right name, but expired yesterday.
    Expired,
    /// For the right name, but from a CA nobody trusts.
    Untrusted,
    /// Valid, for the requested names, but expiring in 5 days.
    ExpiresSoon,
}

struct Inner {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    rogue: Issuer<'static, KeyPair>,
}

/// A throwaway certificate authority, made at test time.
#[derive(Clone)]
pub struct TestCa {
    inner: Arc<Inner>,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("empty SAN list");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = OffsetDateTime::now_utc() - Duration::days(2);
    params.not_after = OffsetDateTime::now_utc() + Duration::days(365);
    params
}

impl TestCa {
    pub fn new() -> Self {
        let key = KeyPair::generate().expect("generate CA key");
        let params = ca_params("mta-stsd test CA");
        let cert = params.self_signed(&key).expect("self-sign CA");
        let rogue_key = KeyPair::generate().expect("generate rogue key");
        let rogue = Issuer::new(ca_params("untrusted CA"), rogue_key);
        TestCa {
            inner: Arc::new(Inner {
                cert_der: cert.der().clone(),
                cert_pem: cert.pem(),
                issuer: Issuer::new(params, key),
                rogue,
            }),
        }
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.inner.cert_der.clone()
    }

    /// The CA certificate, PEM (for `ca_file` and for Postfix's trust anchors).
    pub fn cert_pem(&self) -> String {
        self.inner.cert_pem.clone()
    }

    /// Issues a server certificate; returns (chain DER, key DER) and PEM forms.
    pub fn issue(&self, names: &[&str], kind: CertKind) -> IssuedCert {
        let sans: Vec<String> = match kind {
            CertKind::WrongName => vec!["wrong-name.invalid".to_owned()],
            _ => names.iter().map(|s| (*s).to_owned()).collect(),
        };
        let mut params = CertificateParams::new(sans).expect("valid SANs");
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("test"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = OffsetDateTime::now_utc();
        if kind == CertKind::Expired {
            params.not_before = now - Duration::days(30);
            params.not_after = now - Duration::days(1);
        } else if kind == CertKind::ExpiresSoon {
            params.not_before = now - Duration::days(80);
            params.not_after = now + Duration::days(5) + Duration::hours(1);
        } else {
            params.not_before = now - Duration::days(1);
            params.not_after = now + Duration::days(30);
        }
        let key = KeyPair::generate().expect("generate leaf key");
        let issuer = if kind == CertKind::Untrusted {
            &self.inner.rogue
        } else {
            &self.inner.issuer
        };
        let cert = params.signed_by(&key, issuer).expect("sign leaf");
        IssuedCert {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_der: key.serialize_der(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A certificate for a TLS peer that is server and client alike (a Redis node
    /// accepts connections and replicates from its master with the same one), for
    /// `names`, which may be IP addresses.
    pub fn issue_peer(&self, names: &[&str]) -> IssuedCert {
        let sans: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(sans).expect("valid SANs");
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("test"));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(30);
        let key = KeyPair::generate().expect("generate leaf key");
        let cert = params
            .signed_by(&key, &self.inner.issuer)
            .expect("sign leaf");
        IssuedCert {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_der: key.serialize_der(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A rustls `CertifiedKey` for an HTTPS server.
    pub fn certified_key(&self, names: &[&str], kind: CertKind) -> Arc<CertifiedKey> {
        let issued = self.issue(names, kind);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.key_der));
        let signing = any_supported_type(&key).expect("supported key");
        Arc::new(CertifiedKey::new(vec![issued.cert_der], signing))
    }
}

/// A leaf certificate and its key.
pub struct IssuedCert {
    pub cert_der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_der: Vec<u8>,
    pub key_pem: String,
}
