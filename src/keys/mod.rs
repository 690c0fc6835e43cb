//! Certificates and private keys as eppmux receives them: where they come from (a PEM file, or
//! the content of an environment variable — PEM text, or the base64 of it, which is how Cloud
//! Foundry apps such as getgov keep them), and private keys that may be encrypted with a
//! passphrase, turned into the DER rustls takes.
//!
//! Encrypted keys come in two forms:
//! - PKCS#8 `ENCRYPTED PRIVATE KEY` (PBES2 with PBKDF2 or scrypt and AES-CBC or 3DES, what
//!   `openssl pkcs8 -topk8 -v2 …` writes): decrypted by the `pkcs8`/`pkcs5` crates;
//! - the legacy OpenSSL form, a `RSA PRIVATE KEY` / `EC PRIVATE KEY` block with `Proc-Type:
//!   4,ENCRYPTED` and `DEK-Info: CIPHER,IV` headers (what `openssl rsa -aes256 -traditional`
//!   writes): no maintained crate decrypts it, so [`decrypt_legacy`] does, in a few lines over the
//!   RustCrypto ciphers.
//!
//! Every error says what is wrong with the key (encrypted but no passphrase, wrong passphrase,
//! unsupported cipher); the caller adds which file or variable it came from.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};
use serde::{Serialize, Serializer};

use crate::secret::Secret;

/// What is wrong with a private key or a PEM input.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read: {0}")]
    Read(#[from] std::io::Error),
    #[error("not PEM: {0}")]
    NotPem(String),
    #[error("no private key found (PEM blocks: {0})")]
    NoKey(String),
    #[error("the private key is encrypted ({scheme}) but no passphrase was given")]
    NoPassphrase { scheme: String },
    #[error("wrong passphrase for the encrypted private key ({scheme})")]
    WrongPassphrase { scheme: String },
    #[error("the private key is encrypted with {0}, which eppmux cannot decrypt; re-encrypt it with `openssl pkcs8 -topk8 -v2 aes-256-cbc`")]
    UnsupportedCipher(String),
    #[error("malformed private key: {0}")]
    Malformed(String),
}

/// Where a PEM input (a certificate chain or a private key) comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum PemSource {
    File(PathBuf),
    /// The PEM text of an environment variable (already decoded from base64 if it was).
    Env {
        var: String,
        pem: Secret,
    },
}

impl PemSource {
    /// The content of environment variable `var`: PEM text, or base64 of PEM text (line breaks
    /// and spaces allowed, as `base64` and CI secret stores wrap it).
    pub fn from_env_value(var: &str, value: &str) -> Result<PemSource, KeyError> {
        let value = value.trim();
        let pem = if value.contains("-----BEGIN ") {
            value.to_string()
        } else {
            let compact: String = value.chars().filter(|c| !c.is_whitespace()).collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(compact.as_bytes())
                .map_err(|_| {
                    KeyError::NotPem("neither PEM text (-----BEGIN …) nor base64 of PEM".into())
                })?;
            match String::from_utf8(bytes) {
                Ok(text) if text.contains("-----BEGIN ") => text.trim().to_string(),
                _ => {
                    return Err(KeyError::NotPem(
                        "valid base64, but what it encodes is not PEM text".into(),
                    ))
                }
            }
        };
        Ok(PemSource::Env {
            var: var.to_string(),
            pem: Secret::new(pem),
        })
    }

    /// The file, when the input is one (for permission checks).
    pub fn path(&self) -> Option<&Path> {
        match self {
            PemSource::File(p) => Some(p),
            PemSource::Env { .. } => None,
        }
    }

    pub fn read(&self) -> Result<Vec<u8>, KeyError> {
        match self {
            PemSource::File(p) => Ok(std::fs::read(p)?),
            PemSource::Env { pem, .. } => Ok(pem.expose().as_bytes().to_vec()),
        }
    }
}

/// The file name, or the variable's name: what error messages and `--print-config` show. Never
/// the content.
impl fmt::Display for PemSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PemSource::File(p) => write!(f, "{}", p.display()),
            PemSource::Env { var, .. } => write!(f, "<from {var}>"),
        }
    }
}

impl fmt::Debug for PemSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl Serialize for PemSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl From<PathBuf> for PemSource {
    fn from(p: PathBuf) -> Self {
        PemSource::File(p)
    }
}

impl From<&Path> for PemSource {
    fn from(p: &Path) -> Self {
        PemSource::File(p.to_path_buf())
    }
}

impl From<&PathBuf> for PemSource {
    fn from(p: &PathBuf) -> Self {
        PemSource::File(p.clone())
    }
}

/// So that code written when these were paths (`assert_eq!(cfg.upstream.cert, dir.join(…))`)
/// still reads naturally.
impl PartialEq<PathBuf> for PemSource {
    fn eq(&self, other: &PathBuf) -> bool {
        self.path() == Some(other.as_path())
    }
}

/// What TLS set-up functions take for a certificate: a path or a [`PemSource`]. (A trait on
/// references rather than `impl Into<PemSource>`, so that callers keep writing `&path`.)
pub trait PemInput {
    fn pem_source(&self) -> PemSource;
}

impl PemInput for Path {
    fn pem_source(&self) -> PemSource {
        self.into()
    }
}

impl PemInput for PathBuf {
    fn pem_source(&self) -> PemSource {
        self.into()
    }
}

impl PemInput for PemSource {
    fn pem_source(&self) -> PemSource {
        self.clone()
    }
}

/// What TLS set-up functions take for a private key: a path, a [`PemSource`] (not encrypted) or
/// a [`KeySource`].
pub trait KeyInput {
    fn key_source(&self) -> KeySource;
}

impl<T: PemInput + ?Sized> KeyInput for T {
    fn key_source(&self) -> KeySource {
        KeySource {
            pem: self.pem_source(),
            passphrase: None,
        }
    }
}

impl KeyInput for KeySource {
    fn key_source(&self) -> KeySource {
        self.clone()
    }
}

/// A private key's PEM and the passphrase that decrypts it, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySource {
    pub pem: PemSource,
    pub passphrase: Option<Secret>,
}

impl KeySource {
    pub fn decode(&self) -> Result<PrivateKeyDer<'static>, KeyError> {
        decode_private_key(&self.pem.read()?, self.passphrase.as_ref())
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.passphrase {
            Some(p) => write!(f, "{} (passphrase {p})", self.pem),
            None => write!(f, "{}", self.pem),
        }
    }
}

impl Serialize for KeySource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<T: Into<PemSource>> From<T> for KeySource {
    fn from(pem: T) -> Self {
        KeySource {
            pem: pem.into(),
            passphrase: None,
        }
    }
}

impl PartialEq<PathBuf> for KeySource {
    fn eq(&self, other: &PathBuf) -> bool {
        self.pem == *other
    }
}

/// The first private key in `pem`, decrypted with `passphrase` if it is encrypted. A passphrase
/// given for a key that is not encrypted is ignored, as OpenSSL does.
pub fn decode_private_key(
    pem: &[u8],
    passphrase: Option<&Secret>,
) -> Result<PrivateKeyDer<'static>, KeyError> {
    let blocks = pem::parse_many(pem).map_err(|e| KeyError::NotPem(e.to_string()))?;
    let Some(block) = blocks.iter().find(|b| {
        matches!(
            b.tag(),
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" | "ENCRYPTED PRIVATE KEY"
        )
    }) else {
        let tags: Vec<&str> = blocks.iter().map(|b| b.tag()).collect();
        return Err(KeyError::NoKey(if tags.is_empty() {
            "none".into()
        } else {
            tags.join(", ")
        }));
    };
    if block.tag() == "ENCRYPTED PRIVATE KEY" {
        return decrypt_pkcs8(block.contents(), passphrase);
    }
    let der = match block.headers().get("DEK-Info") {
        Some(dek_info) => decrypt_legacy(block.contents(), dek_info, passphrase)?,
        None => block.contents().to_vec(),
    };
    Ok(match block.tag() {
        "RSA PRIVATE KEY" => PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der)),
        "EC PRIVATE KEY" => PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der)),
        _ => PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)),
    })
}

fn decrypt_pkcs8(
    der: &[u8],
    passphrase: Option<&Secret>,
) -> Result<PrivateKeyDer<'static>, KeyError> {
    let info =
        pkcs8::EncryptedPrivateKeyInfo::try_from(der).map_err(|e| {
            match unsupported_scheme(der) {
                Some(name) => KeyError::UnsupportedCipher(name),
                None => KeyError::Malformed(e.to_string()),
            }
        })?;
    let scheme = describe_scheme(&info.encryption_algorithm);
    if let pkcs5::EncryptionScheme::Pbes1(alg) = &info.encryption_algorithm {
        return Err(KeyError::UnsupportedCipher(format!("PBES1 {}", alg.oid())));
    }
    let passphrase = passphrase.ok_or_else(|| KeyError::NoPassphrase {
        scheme: scheme.clone(),
    })?;
    let plain = match info.decrypt(passphrase.expose().as_bytes()) {
        Ok(doc) => doc,
        Err(pkcs8::Error::EncryptedPrivateKey(pkcs5::Error::UnsupportedAlgorithm { oid })) => {
            return Err(KeyError::UnsupportedCipher(format!("{scheme} ({oid})")))
        }
        // A wrong passphrase yields bad padding, or (1 time in 256) bytes that are not DER.
        Err(_) => return Err(KeyError::WrongPassphrase { scheme }),
    };
    // The decrypted bytes must be a PrivateKeyInfo; anything else means the passphrase was wrong.
    pkcs8::PrivateKeyInfo::try_from(plain.as_bytes()).map_err(|_| KeyError::WrongPassphrase {
        scheme: scheme.clone(),
    })?;
    Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        plain.as_bytes().to_vec(),
    )))
}

/// "PBES2: PBKDF2-hmacWithSHA256, AES-256-CBC" and the like, for messages.
fn describe_scheme(scheme: &pkcs5::EncryptionScheme<'_>) -> String {
    match scheme {
        pkcs5::EncryptionScheme::Pbes1(alg) => format!("PKCS#8, PBES1 {}", alg.oid()),
        pkcs5::EncryptionScheme::Pbes2(params) => {
            let kdf = match &params.kdf {
                pkcs5::pbes2::Kdf::Pbkdf2(p) => format!("PBKDF2-{:?}", p.prf),
                pkcs5::pbes2::Kdf::Scrypt(_) => "scrypt".to_string(),
                _ => params.kdf.oid().to_string(),
            };
            let cipher = match params.encryption {
                pkcs5::pbes2::EncryptionScheme::Aes128Cbc { .. } => "AES-128-CBC",
                pkcs5::pbes2::EncryptionScheme::Aes192Cbc { .. } => "AES-192-CBC",
                pkcs5::pbes2::EncryptionScheme::Aes256Cbc { .. } => "AES-256-CBC",
                pkcs5::pbes2::EncryptionScheme::DesEde3Cbc { .. } => "DES-EDE3-CBC",
                _ => "another cipher",
            };
            format!("PKCS#8, PBES2 {kdf}, {cipher}")
        }
        _ => "PKCS#8, unknown scheme".to_string(),
    }
}

/// When `pkcs8` cannot parse an EncryptedPrivateKeyInfo, names the scheme or cipher it holds if
/// the structure itself is sound, so that the error says "unsupported", not "malformed".
fn unsupported_scheme(der: &[u8]) -> Option<String> {
    use pkcs8::der::{Decode, Reader, SliceReader};
    use pkcs8::spki::AlgorithmIdentifierRef;
    const PBES2: &str = "1.2.840.113549.1.5.13";
    let mut reader = SliceReader::new(der).ok()?;
    let alg = reader
        .sequence(|r| {
            let alg = AlgorithmIdentifierRef::decode(r)?;
            r.read_slice(r.remaining_len())?;
            Ok(alg)
        })
        .ok()?;
    if alg.oid.to_string() != PBES2 {
        return Some(format!("{} ({})", oid_name(&alg.oid.to_string()), alg.oid));
    }
    // PBES2-params: SEQUENCE { keyDerivationFunc AlgorithmIdentifier, encryptionScheme AlgorithmIdentifier }
    // (`AnyRef::value` is the content of that SEQUENCE.)
    let params = alg.parameters?;
    let mut reader = SliceReader::new(params.value()).ok()?;
    let kdf = AlgorithmIdentifierRef::decode(&mut reader).ok()?.oid;
    let enc = AlgorithmIdentifierRef::decode(&mut reader).ok()?.oid;
    let (kdf, enc) = (kdf.to_string(), enc.to_string());
    Some(format!(
        "PBES2 with {} ({kdf}) and {} ({enc})",
        oid_name(&kdf),
        oid_name(&enc)
    ))
}

/// Names of the OIDs an operator is likely to meet in an encrypted key nobody can decrypt here.
fn oid_name(oid: &str) -> &'static str {
    match oid {
        "1.2.840.113549.1.12.1.3" => "PKCS#12 pbeWithSHAAnd3-KeyTripleDES-CBC",
        "1.2.840.113549.1.12.1.6" => "PKCS#12 pbeWithSHAAnd40BitRC2-CBC",
        "1.2.840.113549.1.12.1.1" => "PKCS#12 pbeWithSHAAnd128BitRC4",
        "1.2.840.113549.1.5.12" => "PBKDF2",
        "1.3.6.1.4.1.11591.4.11" => "scrypt",
        "1.2.392.200011.61.1.1.1.2" => "Camellia-128-CBC",
        "1.2.392.200011.61.1.1.1.3" => "Camellia-192-CBC",
        "1.2.392.200011.61.1.1.1.4" => "Camellia-256-CBC",
        "1.3.14.3.2.7" => "DES-CBC",
        "1.2.840.113549.3.2" => "RC2-CBC",
        "2.16.840.1.101.3.4.1.6" | "2.16.840.1.101.3.4.1.26" | "2.16.840.1.101.3.4.1.46" => {
            "AES-GCM"
        }
        _ => "an unknown algorithm",
    }
}

/// The legacy OpenSSL PEM encryption (RFC 1421 headers on a PKCS#1 or SEC1 block).
///
/// Hand-written because no maintained crate reads this form (RustCrypto's `pkcs1`/`sec1` and
/// rustls' PEM parser reject the headers). The key is OpenSSL's `EVP_BytesToKey` with MD5, one
/// iteration, the first 8 bytes of the IV as salt; the data is CBC with PKCS#7 padding.
fn decrypt_legacy(
    data: &[u8],
    dek_info: &str,
    passphrase: Option<&Secret>,
) -> Result<Vec<u8>, KeyError> {
    use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyIvInit};

    let (cipher, iv_hex) = dek_info
        .split_once(',')
        .ok_or_else(|| KeyError::Malformed(format!("DEK-Info `{dek_info}` is not CIPHER,IV")))?;
    let cipher = cipher.trim().to_ascii_uppercase();
    let scheme = format!("legacy OpenSSL PEM encryption, {cipher}");
    let (key_len, iv_len) = match cipher.as_str() {
        "AES-128-CBC" => (16, 16),
        "AES-192-CBC" => (24, 16),
        "AES-256-CBC" => (32, 16),
        "DES-EDE3-CBC" => (24, 8),
        _ => return Err(KeyError::UnsupportedCipher(scheme)),
    };
    let iv = decode_hex(iv_hex.trim())
        .filter(|iv| iv.len() == iv_len)
        .ok_or_else(|| KeyError::Malformed(format!("DEK-Info IV `{iv_hex}`")))?;
    let passphrase = passphrase.ok_or_else(|| KeyError::NoPassphrase {
        scheme: scheme.clone(),
    })?;
    let key = evp_bytes_to_key(passphrase.expose().as_bytes(), &iv[..8], key_len);
    let wrong = || KeyError::WrongPassphrase {
        scheme: scheme.clone(),
    };
    let bad_key = |_| KeyError::Malformed("cipher key or IV length".into());
    let plain = match cipher.as_str() {
        "AES-128-CBC" => cbc::Decryptor::<aes::Aes128>::new_from_slices(&key, &iv)
            .map_err(bad_key)?
            .decrypt_padded_vec_mut::<Pkcs7>(data),
        "AES-192-CBC" => cbc::Decryptor::<aes::Aes192>::new_from_slices(&key, &iv)
            .map_err(bad_key)?
            .decrypt_padded_vec_mut::<Pkcs7>(data),
        "AES-256-CBC" => cbc::Decryptor::<aes::Aes256>::new_from_slices(&key, &iv)
            .map_err(bad_key)?
            .decrypt_padded_vec_mut::<Pkcs7>(data),
        _ => cbc::Decryptor::<des::TdesEde3>::new_from_slices(&key, &iv)
            .map_err(bad_key)?
            .decrypt_padded_vec_mut::<Pkcs7>(data),
    }
    .map_err(|_| wrong())?;
    // Right padding by chance (1 in 256 for a wrong passphrase) still leaves bytes that are not
    // one DER SEQUENCE.
    pkcs8::der::Document::try_from(plain.as_slice()).map_err(|_| wrong())?;
    Ok(plain)
}

/// OpenSSL's `EVP_BytesToKey(cipher, EVP_md5(), salt, pass, 1)`: D_i = MD5(D_{i-1} ‖ pass ‖ salt),
/// concatenated until there are `len` bytes.
fn evp_bytes_to_key(pass: &[u8], salt: &[u8], len: usize) -> Vec<u8> {
    use md5::{Digest, Md5};
    let mut key = Vec::with_capacity(len + 16);
    let mut prev: Vec<u8> = Vec::new();
    while key.len() < len {
        let mut h = Md5::new();
        h.update(&prev);
        h.update(pass);
        h.update(salt);
        prev = h.finalize().to_vec();
        key.extend_from_slice(&prev);
    }
    key.truncate(len);
    key
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
pub(crate) mod tests;
