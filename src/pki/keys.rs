//! Private keys in kubeadm's formats: RSA as PKCS#1 (`RSA PRIVATE KEY`), ECDSA as SEC1 with the
//! curve parameters (`EC PRIVATE KEY`), public keys as PKIX (`PUBLIC KEY`).

use anyhow::{anyhow, Context, Result};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{
    EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING,
};
use pkcs8::der::Decode;
use rcgen::{KeyPair, PublicKeyData, RsaKeySize};
use rustls_pki_types::{PrivateKeyDer, PrivateSec1KeyDer};

use crate::config::EncryptionAlgorithm;

pub struct Key {
    pub pair: KeyPair,
    /// The key as written to disk.
    pub pem: String,
}

pub fn pem_encode(tag: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(tag, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

pub fn generate(alg: EncryptionAlgorithm) -> Result<Key> {
    let rsa = |size| -> Result<Key> {
        let pair = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, size)?;
        let info = pkcs8::PrivateKeyInfo::from_der(pair.serialized_der())
            .map_err(|e| anyhow!("re-encoding a generated RSA key: {e}"))?;
        let pem = pem_encode("RSA PRIVATE KEY", info.private_key);
        Ok(Key { pair, pem })
    };
    let ecdsa = |lc_alg, rcgen_alg| -> Result<Key> {
        let lc = EcdsaKeyPair::generate(lc_alg).map_err(|_| anyhow!("generating an ECDSA key"))?;
        let sec1 = lc
            .private_key()
            .as_der()
            .map_err(|_| anyhow!("encoding an ECDSA key"))?;
        let der = PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(sec1.as_ref().to_vec()));
        let pair = KeyPair::from_der_and_sign_algo(&der, rcgen_alg)?;
        Ok(Key {
            pair,
            pem: pem_encode("EC PRIVATE KEY", sec1.as_ref()),
        })
    };
    match alg {
        EncryptionAlgorithm::Rsa2048 => rsa(RsaKeySize::_2048),
        EncryptionAlgorithm::Rsa3072 => rsa(RsaKeySize::_3072),
        EncryptionAlgorithm::Rsa4096 => rsa(RsaKeySize::_4096),
        EncryptionAlgorithm::EcdsaP256 => ecdsa(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            &rcgen::PKCS_ECDSA_P256_SHA256,
        ),
        EncryptionAlgorithm::EcdsaP384 => ecdsa(
            &ECDSA_P384_SHA384_ASN1_SIGNING,
            &rcgen::PKCS_ECDSA_P384_SHA384,
        ),
    }
}

/// Keys started by `prefetch`, then the ones made but not yet taken.
type Prefetch = (
    EncryptionAlgorithm,
    std::thread::JoinHandle<Result<Vec<Key>>>,
);
static PREFETCHED: std::sync::Mutex<Option<Prefetch>> = std::sync::Mutex::new(None);
static STASH: std::sync::Mutex<Vec<Key>> = std::sync::Mutex::new(Vec::new());

/// Starts making `count` keys in the background, on every core, while the phases before `certs`
/// run; `generate_many` takes them. RSA prime search dominates a fresh init's first second.
pub fn prefetch(alg: EncryptionAlgorithm, count: usize) {
    if count == 0 {
        return;
    }
    let handle = std::thread::spawn(move || generate_now(alg, count));
    *PREFETCHED.lock().expect("key pool lock") = Some((alg, handle));
}

/// `count` keys: prefetched ones first, the rest made now on every core.
pub fn generate_many(alg: EncryptionAlgorithm, count: usize) -> Result<Vec<Key>> {
    let prefetched = PREFETCHED.lock().expect("key pool lock").take();
    if let Some((made_for, handle)) = prefetched {
        let keys = handle.join().expect("key generation thread panicked")?;
        if made_for == alg {
            STASH.lock().expect("key pool lock").extend(keys);
        }
    }
    let mut out: Vec<Key> = {
        let mut stash = STASH.lock().expect("key pool lock");
        let take = count.min(stash.len());
        stash.drain(..take).collect()
    };
    let rest = count - out.len();
    out.extend(generate_now(alg, rest)?);
    Ok(out)
}

/// Generates `count` keys on every core.
fn generate_now(alg: EncryptionAlgorithm, count: usize) -> Result<Vec<Key>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(count.max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Vec<Result<Key>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < count {
                        mine.push(generate(alg));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("key generation thread panicked"))
            .collect()
    });
    results.into_iter().flatten().collect()
}

/// Parses a PEM private key (PKCS#1, SEC1 or PKCS#8).
pub fn load(pem_text: &str) -> Result<Key> {
    let pair = KeyPair::from_pem(pem_text).context("parsing the private key")?;
    Ok(Key {
        pair,
        pem: pem_text.to_string(),
    })
}

/// The PKIX `PUBLIC KEY` PEM of a key (sa.pub).
pub fn public_pem(key: &Key) -> String {
    pem_encode("PUBLIC KEY", &key.pair.subject_public_key_info())
}

/// The algorithm of a key, when it is one kubeadm makes.
pub fn algorithm_of(key: &Key) -> Option<EncryptionAlgorithm> {
    use x509_parser::prelude::FromDer;
    use x509_parser::public_key::PublicKey;
    let spki_der = key.pair.subject_public_key_info();
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&spki_der).ok()?;
    match spki.parsed().ok()? {
        PublicKey::RSA(rsa) => match rsa.key_size() {
            2048 => Some(EncryptionAlgorithm::Rsa2048),
            3072 => Some(EncryptionAlgorithm::Rsa3072),
            4096 => Some(EncryptionAlgorithm::Rsa4096),
            _ => None,
        },
        PublicKey::EC(ec) => match ec.key_size() {
            256 => Some(EncryptionAlgorithm::EcdsaP256),
            384 => Some(EncryptionAlgorithm::EcdsaP384),
            _ => None,
        },
        _ => None,
    }
}
