use super::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn passphrase() -> Secret {
    Secret::new(
        String::from_utf8(fixture("passphrase.txt"))
            .unwrap()
            .trim_end()
            .to_string(),
    )
}

#[test]
fn evp_bytes_to_key_matches_openssl() {
    // `openssl enc -aes-256-cbc -md md5 -S 0102030405060708 -pass pass:secret -P`
    let key = evp_bytes_to_key(b"secret", &[1, 2, 3, 4, 5, 6, 7, 8], 32);
    assert_eq!(
        key.iter().map(|b| format!("{b:02X}")).collect::<String>(),
        EXPECTED_EVP_KEY
    );
}
const EXPECTED_EVP_KEY: &str = "C9E5A1BD216DBE1317E230CEF48F38EE7F0E17AD64022144BCCEC4A1AA2879AB";

/// Every encrypted key fixture (tests/fixtures/keys/make-keys.sh) with its certificate; the plain
/// key of `x.pem` is `x-key.pem`. The TLS and handshake tests load each form too.
pub(crate) const ENCRYPTED_FIXTURES: [(&str, &str); 7] = [
    ("rsa.pem", "rsa-key-pkcs8-aes256.pem"),
    ("rsa.pem", "rsa-key-pkcs8-sha1.pem"),
    ("rsa.pem", "rsa-key-legacy-aes256.pem"),
    ("rsa.pem", "rsa-key-legacy-des3.pem"),
    ("ec.pem", "ec-key-pkcs8-scrypt.pem"),
    ("ec.pem", "ec-key-pkcs8-des3.pem"),
    ("ec.pem", "ec-key-legacy-aes128.pem"),
];

#[test]
fn every_supported_encrypted_form_decrypts_to_the_plain_key() {
    let pass = passphrase();
    for (cert, file) in ENCRYPTED_FIXTURES {
        let plain = &cert.replace(".pem", "-key.pem");
        let key = decode_private_key(&fixture(file), Some(&pass))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let plain_key = decode_private_key(&fixture(plain), None).unwrap();
        assert!(
            same_key(&key, &plain_key),
            "{file} is not the key in {plain}"
        );
    }
}

/// The same key pair, whatever its encoding (PKCS#8, PKCS#1, SEC1 with or without the curve):
/// rustls accepts both and derives the same public key.
fn same_key(a: &PrivateKeyDer<'_>, b: &PrivateKeyDer<'_>) -> bool {
    let public = |k: &PrivateKeyDer<'_>| {
        rustls::crypto::ring::sign::any_supported_type(k)
            .expect("rustls accepts the key")
            .public_key()
            .expect("a public key")
            .as_ref()
            .to_vec()
    };
    public(a) == public(b)
}

#[test]
fn encrypted_keys_without_a_passphrase_say_so() {
    for file in [
        "rsa-key-pkcs8-aes256.pem",
        "rsa-key-legacy-aes256.pem",
        "ec-key-legacy-aes128.pem",
    ] {
        let err = decode_private_key(&fixture(file), None).unwrap_err();
        assert!(
            matches!(err, KeyError::NoPassphrase { .. }),
            "{file}: {err}"
        );
        assert!(err.to_string().contains("encrypted"), "{err}");
    }
}

#[test]
fn a_wrong_passphrase_is_named_as_such() {
    let wrong = Secret::new("not the passphrase");
    for file in [
        "rsa-key-pkcs8-aes256.pem",
        "ec-key-pkcs8-scrypt.pem",
        "rsa-key-legacy-aes256.pem",
        "rsa-key-legacy-des3.pem",
    ] {
        let err = decode_private_key(&fixture(file), Some(&wrong)).unwrap_err();
        assert!(
            matches!(err, KeyError::WrongPassphrase { .. }),
            "{file}: {err}"
        );
    }
}

#[test]
fn unsupported_ciphers_are_named() {
    let pass = passphrase();
    for (file, named) in [
        ("rsa-key-pkcs8-camellia.pem", "Camellia-256-CBC"),
        ("rsa-key-pkcs12-3des.pem", "PKCS#12"),
        ("rsa-key-legacy-camellia.pem", "CAMELLIA-256-CBC"),
    ] {
        let err = decode_private_key(&fixture(file), Some(&pass)).unwrap_err();
        assert!(
            matches!(err, KeyError::UnsupportedCipher(_)) && err.to_string().contains(named),
            "{file}: {err}"
        );
    }
}

#[test]
fn plain_keys_and_certificates_are_told_apart() {
    assert!(matches!(
        decode_private_key(&fixture("rsa-key.pem"), None),
        Ok(PrivateKeyDer::Pkcs8(_))
    ));
    let err = decode_private_key(&fixture("rsa.pem"), None).unwrap_err();
    assert!(err.to_string().contains("CERTIFICATE"), "{err}");
}

#[test]
fn environment_values_may_be_pem_or_its_base64() {
    let pem = String::from_utf8(fixture("ec-key.pem")).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&pem);
    // Wrapped at 76 columns, as `base64` prints it.
    let wrapped: String = b64
        .as_bytes()
        .chunks(76)
        .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
        .collect();
    for value in [pem.as_str(), b64.as_str(), wrapped.as_str()] {
        let src = PemSource::from_env_value("EPPMUX_TLS_KEY_PEM", value).unwrap();
        assert_eq!(src.read().unwrap(), pem.trim().as_bytes());
        assert_eq!(src.to_string(), "<from EPPMUX_TLS_KEY_PEM>");
        assert!(!format!("{src:?}").contains("PRIVATE"));
    }
    let err = PemSource::from_env_value("V", "bm90IHBlbQ==").unwrap_err();
    assert!(err.to_string().contains("not PEM"), "{err}");
    let err = PemSource::from_env_value("V", "%%%").unwrap_err();
    assert!(err.to_string().contains("base64"), "{err}");
}
