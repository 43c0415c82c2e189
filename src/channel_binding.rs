//! Channel binding of type `tls-server-end-point` (RFC 5929), the one
//! PostgreSQL supports: the hash of the certificate pgcell presents. The
//! TLS setup computes it once per certificate; SCRAM-SHA-256-PLUS binds
//! the client's exchange to it.

use sha2::{Digest, Sha256, Sha384, Sha512};

/// The channel-binding data of RFC 5929 `tls-server-end-point` for the
/// certificate pgcell presents (DER): its hash with the hash function of
/// the certificate's signature algorithm, SHA-256 instead of MD5 or SHA-1.
///
/// Unknown algorithms (Ed25519, ...) use SHA-256; RSASSA-PSS uses the hash
/// named in its parameters (SHA-256 unless it names SHA-384 or SHA-512).
/// `None` when `cert_der` is not a DER `Certificate`.
pub(crate) fn tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    Some(match der::signature_hash(cert_der)? {
        der::Hash::Sha256 => Sha256::digest(cert_der).to_vec(),
        der::Hash::Sha384 => Sha384::digest(cert_der).to_vec(),
        der::Hash::Sha512 => Sha512::digest(cert_der).to_vec(),
    })
}

/// Just enough DER to find an X.509 certificate's signature algorithm.
mod der {
    /// Hash function for `tls-server-end-point`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Hash {
        Sha256,
        Sha384,
        Sha512,
    }

    const SEQUENCE: u8 = 0x30;
    const BIT_STRING: u8 = 0x03;
    const OID: u8 = 0x06;
    /// `[0]` constructed, context-specific.
    const CONTEXT_0: u8 = 0xa0;

    // Signature algorithm OIDs, DER content bytes.
    /// 1.2.840.113549.1.1.12 sha384WithRSAEncryption
    const SHA384_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
    /// 1.2.840.113549.1.1.13 sha512WithRSAEncryption
    const SHA512_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
    /// 1.2.840.113549.1.1.10 RSASSA-PSS
    const RSASSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
    /// 1.2.840.10045.4.3.3 ecdsa-with-SHA384
    const ECDSA_WITH_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
    /// 1.2.840.10045.4.3.4 ecdsa-with-SHA512
    const ECDSA_WITH_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04];
    // Hash algorithm OIDs, for RSASSA-PSS parameters.
    /// 2.16.840.1.101.3.4.2.2 id-sha384
    const SHA384: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
    /// 2.16.840.1.101.3.4.2.3 id-sha512
    const SHA512: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];

    /// The hash for `tls-server-end-point` from
    /// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm
    /// AlgorithmIdentifier, signatureValue BIT STRING }`, or `None` if
    /// `cert` is not shaped like that.
    pub(super) fn signature_hash(cert: &[u8]) -> Option<Hash> {
        let (certificate, rest) = read(cert, SEQUENCE)?;
        if !rest.is_empty() {
            return None;
        }
        let (_tbs_certificate, rest) = read(certificate, SEQUENCE)?;
        let (algorithm, rest) = read(rest, SEQUENCE)?;
        let (_signature, rest) = read(rest, BIT_STRING)?;
        if !rest.is_empty() {
            return None;
        }
        let (oid, parameters) = read(algorithm, OID)?;
        Some(match oid {
            SHA384_WITH_RSA | ECDSA_WITH_SHA384 => Hash::Sha384,
            SHA512_WITH_RSA | ECDSA_WITH_SHA512 => Hash::Sha512,
            RSASSA_PSS => pss_hash(parameters),
            // SHA-256 itself, MD5 and SHA-1 (which RFC 5929 maps to
            // SHA-256), and everything else.
            _ => Hash::Sha256,
        })
    }

    /// `RSASSA-PSS-params ::= SEQUENCE { hashAlgorithm [0] HashAlgorithm
    /// DEFAULT sha1, ... }`; SHA-1 and anything unreadable map to SHA-256.
    fn pss_hash(parameters: &[u8]) -> Hash {
        let hash = read(parameters, SEQUENCE)
            .and_then(|(params, _)| read(params, CONTEXT_0))
            .and_then(|(explicit, _)| read(explicit, SEQUENCE))
            .and_then(|(algorithm, _)| read(algorithm, OID));
        match hash {
            Some((SHA384, _)) => Hash::Sha384,
            Some((SHA512, _)) => Hash::Sha512,
            _ => Hash::Sha256,
        }
    }

    /// Reads one TLV with a single-byte `tag`; returns its contents and
    /// what follows. Definite lengths up to 4 bytes only.
    fn read(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        let (&found, input) = input.split_first()?;
        if found != tag {
            return None;
        }
        let (&first, input) = input.split_first()?;
        let (len, input) = if first < 0x80 {
            (usize::from(first), input)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 {
                return None;
            }
            let (bytes, input) = input.split_at_checked(count)?;
            let len = bytes.iter().try_fold(0usize, |len, &b| {
                len.checked_mul(256)?.checked_add(usize::from(b))
            })?;
            (len, input)
        };
        input.split_at_checked(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_point_hash_follows_the_signature_algorithm() {
        for (alg, len) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, 32),
            (&rcgen::PKCS_ECDSA_P384_SHA384, 48),
            (&rcgen::PKCS_ED25519, 32),
        ] {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
            let cert = params.self_signed(&key).unwrap();
            let der = cert.der().as_ref();
            let data = tls_server_end_point(der).unwrap();
            assert_eq!(data.len(), len);
            let expected = match len {
                32 => Sha256::digest(der).to_vec(),
                _ => Sha384::digest(der).to_vec(),
            };
            assert_eq!(data, expected);
        }
    }

    /// DER TLV with a short or long length.
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match content.len() {
            n @ 0..=0x7f => out.push(n as u8),
            n @ 0x80..=0xff => out.extend([0x81, n as u8]),
            n => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(content);
        out
    }

    fn fake_cert(oid: &[u8], parameters: &[u8]) -> Vec<u8> {
        let tbs = tlv(0x30, &[0x02, 0x01, 0x01].repeat(60));
        let algorithm = tlv(0x30, &[tlv(0x06, oid), parameters.to_vec()].concat());
        let signature = tlv(0x03, &[0; 65]);
        tlv(0x30, &[tbs, algorithm, signature].concat())
    }

    #[test]
    fn end_point_hash_for_rsa_and_legacy_algorithms() {
        let rsa = |n: u8| vec![0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, n];
        let ecdsa = |n: u8| vec![0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, n];
        let null = [0x05, 0x00];
        let cases = [
            (rsa(4), 32),   // md5WithRSAEncryption
            (rsa(5), 32),   // sha1WithRSAEncryption
            (rsa(11), 32),  // sha256WithRSAEncryption
            (rsa(12), 48),  // sha384WithRSAEncryption
            (rsa(13), 64),  // sha512WithRSAEncryption
            (ecdsa(2), 32), // ecdsa-with-SHA256
            (ecdsa(3), 48),
            (ecdsa(4), 64),
            (vec![0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01], 32), // ecdsa-with-SHA1
            (vec![0x2b, 0x65, 0x70], 32),                         // Ed25519
        ];
        for (oid, len) in cases {
            let cert = fake_cert(&oid, &null);
            assert_eq!(
                tls_server_end_point(&cert).map(|d| d.len()),
                Some(len),
                "{oid:x?}"
            );
        }
        let sha = |n: u8| {
            tlv(
                0x30,
                &tlv(0x06, &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, n]),
            )
        };
        let pss = |hash: Option<Vec<u8>>| {
            let fields = hash.map(|h| tlv(0xa0, &h)).unwrap_or_default();
            fake_cert(&rsa(10), &tlv(0x30, &fields))
        };
        assert_eq!(tls_server_end_point(&pss(None)).unwrap().len(), 32);
        assert_eq!(tls_server_end_point(&pss(Some(sha(1)))).unwrap().len(), 32);
        assert_eq!(tls_server_end_point(&pss(Some(sha(2)))).unwrap().len(), 48);
        assert_eq!(tls_server_end_point(&pss(Some(sha(3)))).unwrap().len(), 64);
    }

    #[test]
    fn end_point_hash_rejects_garbage_without_panicking() {
        let cert = fake_cert(&[0x2b, 0x65, 0x70], &[]);
        assert!(tls_server_end_point(&cert).is_some());
        for len in 0..cert.len() {
            assert_eq!(tls_server_end_point(&cert[..len]), None, "prefix {len}");
        }
        let mut trailing = cert.clone();
        trailing.push(0);
        assert_eq!(tls_server_end_point(&trailing), None);
        // Flip every bit; whatever it gives, it must not panic.
        for i in 0..cert.len() {
            for bit in 0..8 {
                let mut flipped = cert.clone();
                flipped[i] ^= 1 << bit;
                let _ = tls_server_end_point(&flipped);
            }
        }
        for garbage in [
            &[][..],
            &[0x30],
            &[0x30, 0x80, 0x00, 0x00],
            &[0x30, 0x85, 1, 0, 0, 0, 0],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x1f, 0x00],
        ] {
            assert_eq!(tls_server_end_point(garbage), None);
        }
    }
}
