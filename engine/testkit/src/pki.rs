//! A certificate authority made in the test, and leaf certificates it signs.

use modelpull_origin::TlsIdentity;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, Issuer, KeyPair,
    date_time_ymd,
};

#[derive(Debug)]
pub struct Pki {
    pub ca_pem: String,
    pub ca: CertifiedIssuer<'static, KeyPair>,
}

pub fn pki() -> Pki {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "modelpull test CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    Pki {
        ca_pem: ca.pem(),
        ca,
    }
}

/// A leaf certificate for `names` signed by another CA, given as its PKCS #8 key and its
/// certificate (PEM).
pub fn leaf_signed_by(ca_key_pem: &str, ca_cert_pem: &str, names: &[&str]) -> TlsIdentity {
    let issuer =
        Issuer::from_ca_cert_pem(ca_cert_pem, KeyPair::from_pem(ca_key_pem).unwrap()).unwrap();
    let params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    TlsIdentity {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

pub fn leaf(pki: &Pki, names: &[&str], expired: bool) -> TlsIdentity {
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    if expired {
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &pki.ca).unwrap();
    TlsIdentity {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}
