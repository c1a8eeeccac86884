//! Base64 with the standard alphabet and `=` padding (RFC 4648, section 4), which the Run
//! reply uses for script output that a JSON string cannot carry byte for byte.
//!
//! [`encode`] takes bytes from a script. [`decode`] takes text from the broker's reply and
//! trusts none of it: it accepts only the canonical encoding, so each byte string has
//! exactly one accepted form.

use thiserror::Error;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

const PADDING: u8 = b'=';

/// Text that is not the canonical base64 encoding of any byte string.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("invalid base64 length {length}: expected a multiple of 4")]
    InvalidLength { length: usize },
    #[error("invalid base64 character {byte:#04x} at offset {offset}")]
    InvalidCharacter { offset: usize, byte: u8 },
    #[error("invalid base64 padding at offset {offset}")]
    InvalidPadding { offset: usize },
    #[error("invalid base64 group at offset {offset}: the bits after the last byte are not zero")]
    NonZeroTrailingBits { offset: usize },
}

/// Encodes `bytes` as base64 with padding.
pub fn encode(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let mut group = [0u8; 3];
        group[..chunk.len()].copy_from_slice(chunk);
        let bits = u32::from(group[0]) << 16 | u32::from(group[1]) << 8 | u32::from(group[2]);
        // A chunk of n bytes fills n + 1 characters, and padding completes the four.
        for index in 0..4 {
            if index <= chunk.len() {
                let sextet = (bits >> (18 - 6 * index)) & 0x3f;
                text.push(char::from(ALPHABET[sextet as usize]));
            } else {
                text.push(char::from(PADDING));
            }
        }
    }
    text
}

/// Decodes canonical base64 with padding, as [`encode`] writes it.
pub fn decode(text: &str) -> Result<Vec<u8>, DecodeError> {
    let input = text.as_bytes();
    if !input.len().is_multiple_of(4) {
        return Err(DecodeError::InvalidLength {
            length: input.len(),
        });
    }
    let group_count = input.len() / 4;
    let mut bytes = Vec::with_capacity(group_count * 3);
    for (group_index, group) in input.chunks_exact(4).enumerate() {
        let offset = group_index * 4;
        let padding = group
            .iter()
            .rev()
            .take_while(|&&byte| byte == PADDING)
            .count();
        let is_last = group_index + 1 == group_count;
        if padding > 2 || (padding > 0 && !is_last) {
            return Err(DecodeError::InvalidPadding {
                offset: offset + 4 - padding,
            });
        }

        let mut bits = 0u32;
        for (index, &byte) in group[..4 - padding].iter().enumerate() {
            let Some(value) = sextet_value(byte) else {
                return Err(DecodeError::InvalidCharacter {
                    offset: offset + index,
                    byte,
                });
            };
            bits |= u32::from(value) << (18 - 6 * index);
        }

        // Each padding character stands for one missing byte, whose bits must be zero.
        let missing_bits = 8 * padding;
        if bits & ((1u32 << missing_bits) - 1) != 0 {
            return Err(DecodeError::NonZeroTrailingBits { offset });
        }
        let decoded_bytes = 3 - padding;
        bytes.extend_from_slice(&bits.to_be_bytes()[1..1 + decoded_bytes]);
    }
    Ok(bytes)
}

fn sextet_value(byte: u8) -> Option<u8> {
    match byte {
        b'A'..=b'Z' => Some(byte - b'A'),
        b'a'..=b'z' => Some(byte - b'a' + 26),
        b'0'..=b'9' => Some(byte - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The test vectors of RFC 4648, section 10.
    const RFC_VECTORS: [(&str, &str); 7] = [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ];

    #[test]
    fn encode_matches_rfc_vectors() {
        for (bytes, text) in RFC_VECTORS {
            assert_eq!(encode(bytes.as_bytes()), text, "encoding {bytes:?}");
        }
    }

    #[test]
    fn decode_matches_rfc_vectors() {
        for (bytes, text) in RFC_VECTORS {
            assert_eq!(
                decode(text),
                Ok(bytes.as_bytes().to_vec()),
                "decoding {text:?}"
            );
        }
    }

    #[test]
    fn encode_uses_plus_and_slash() {
        assert_eq!(encode(&[0xfb, 0xff, 0xbf]), "+/+/");
        assert_eq!(decode("+/+/"), Ok(vec![0xfb, 0xff, 0xbf]));
    }

    #[test]
    fn decode_rejects_length_not_multiple_of_four() {
        assert_eq!(decode("Zm9"), Err(DecodeError::InvalidLength { length: 3 }));
    }

    #[test]
    fn decode_rejects_character_outside_alphabet() {
        assert_eq!(
            decode("Zm-v"),
            Err(DecodeError::InvalidCharacter {
                offset: 2,
                byte: b'-'
            })
        );
        assert_eq!(
            decode("Zm9v\nZg=="),
            Err(DecodeError::InvalidLength { length: 9 })
        );
        assert_eq!(
            decode("Zm9vZ\n=="),
            Err(DecodeError::InvalidCharacter {
                offset: 5,
                byte: b'\n'
            })
        );
    }

    #[test]
    fn decode_rejects_misplaced_padding() {
        assert_eq!(
            decode("Zg==Zm9v"),
            Err(DecodeError::InvalidPadding { offset: 2 })
        );
        assert_eq!(
            decode("Z==="),
            Err(DecodeError::InvalidPadding { offset: 1 })
        );
        assert_eq!(
            decode("===="),
            Err(DecodeError::InvalidPadding { offset: 0 })
        );
        assert_eq!(
            decode("Z=g="),
            Err(DecodeError::InvalidCharacter {
                offset: 1,
                byte: b'='
            })
        );
    }

    #[test]
    fn decode_rejects_non_canonical_trailing_bits() {
        // "Zh==" decodes to "f" as well in a lenient decoder: its last sextet has a bit
        // set below the one byte it carries.
        assert_eq!(
            decode("Zh=="),
            Err(DecodeError::NonZeroTrailingBits { offset: 0 })
        );
        assert_eq!(
            decode("Zm9="),
            Err(DecodeError::NonZeroTrailingBits { offset: 0 })
        );
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let text = encode(&bytes);
            prop_assert_eq!(text.len(), bytes.len().div_ceil(3) * 4);
            prop_assert_eq!(decode(&text), Ok(bytes));
        }

        #[test]
        fn decode_never_panics(text in "[A-Za-z0-9+/=\\-\n]{0,64}") {
            if let Ok(bytes) = decode(&text) {
                prop_assert_eq!(encode(&bytes), text);
            }
        }
    }
}
