use proptest::prelude::*;

use super::*;

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 10) as u8)
        .collect()
}

fn outboard_of(bytes: &[u8]) -> (ContentId, Vec<u8>) {
    let mut ob = Vec::new();
    let id = outboard(bytes, bytes.len() as u64, &mut ob).unwrap();
    (id, ob)
}

fn encoded(bytes: &[u8], piece: u64) -> (ContentId, Vec<u8>) {
    let (id, ob) = outboard_of(bytes);
    let mut out = Vec::new();
    encode_piece_at(id, bytes.len() as u64, bytes, &ob[..], piece, &mut out, 0).unwrap();
    (id, out)
}

#[test]
fn the_content_id_is_the_plain_blake3_hash() {
    for len in [0, 1, 1024, 16 * 1024 + 1, 3 * PIECE_BYTES as usize + 5] {
        let bytes = data(len, 7);
        assert_eq!(outboard_of(&bytes).0, ContentId::of(&bytes), "len {len}");
    }
}

#[test]
fn every_piece_round_trips_and_covers_the_blob() {
    let bytes = data(2 * PIECE_BYTES as usize + 12_345, 1);
    let size = bytes.len() as u64;
    let mut rebuilt = vec![0u8; bytes.len()];
    for piece in 0..piece_count(size) {
        let (id, enc) = encoded(&bytes, piece);
        assert!(enc.len() as u64 <= MAX_ENCODED_PIECE);
        decode_piece(id, size, piece, &enc, &mut rebuilt[..]).unwrap();
    }
    assert_eq!(rebuilt, bytes);
}

#[test]
fn an_empty_blob_has_one_empty_piece() {
    assert_eq!(piece_count(0), 1);
    let (id, enc) = encoded(b"", 0);
    let mut target = Vec::new();
    decode_piece(id, 0, 0, &enc, &mut target).unwrap();
    assert!(target.is_empty());
}

#[test]
fn a_piece_for_another_blob_or_size_or_position_is_refused() {
    let bytes = data(3 * PIECE_BYTES as usize, 2);
    let size = bytes.len() as u64;
    let (id, enc) = encoded(&bytes, 1);
    let mut sink = vec![0u8; bytes.len()];
    // The right piece under another id.
    let other = ContentId::of(b"something else");
    assert!(matches!(
        decode_piece(other, size, 1, &enc, &mut sink[..]),
        Err(PieceError::Corrupt { piece: 1, .. })
    ));
    // Offered as another piece.
    assert!(matches!(
        decode_piece(id, size, 2, &enc, &mut sink[..]),
        Err(PieceError::Corrupt { .. })
    ));
    // Past the end.
    assert!(matches!(
        decode_piece(id, size, 3, &enc, &mut sink[..]),
        Err(PieceError::OutOfRange {
            piece: 3,
            pieces: 3
        })
    ));
    // Cut short, or with bytes trailing.
    assert!(decode_piece(id, size, 1, &enc[..enc.len() - 1], &mut sink[..]).is_err());
    let mut long = enc.clone();
    long.push(0);
    assert!(decode_piece(id, size, 1, &long, &mut sink[..]).is_err());
    // A size nobody can hold.
    assert!(matches!(
        decode_piece(id, MAX_BLOB_BYTES + 1, 0, &enc, &mut sink[..]),
        Err(PieceError::TooLarge)
    ));
}

#[test]
fn a_rotten_blob_is_served_as_held_and_refused_by_the_receiver() {
    let mut bytes = data(PIECE_BYTES as usize + 100, 3);
    let (id, ob) = outboard_of(&bytes);
    bytes[PIECE_BYTES as usize + 50] ^= 1;
    let size = bytes.len() as u64;
    let mut out = Vec::new();
    encode_piece_at(id, size, &bytes[..], &ob[..], 1, &mut out, 0).unwrap();
    let mut target = vec![0u8; bytes.len()];
    assert!(matches!(
        decode_piece(id, size, 1, &out, &mut target[..]),
        Err(PieceError::Corrupt { piece: 1, .. })
    ));
    // The good piece beside it still passes.
    out.clear();
    encode_piece_at(id, size, &bytes[..], &ob[..], 0, &mut out, 0).unwrap();
    decode_piece(id, size, 0, &out, &mut target[..]).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any single flipped bit in an encoded piece (a hash or the data) is caught, and no
    /// unverified byte reaches the target: what was written matches the blob.
    #[test]
    fn a_flipped_bit_never_passes(len in 1usize..(2 * PIECE_BYTES as usize), seed: u8, pick: u64, bit in 0u8..8) {
        let bytes = data(len, seed);
        let size = len as u64;
        let piece = pick % piece_count(size);
        let (id, mut enc) = encoded(&bytes, piece);
        let at = (pick as usize / 3) % enc.len();
        enc[at] ^= 1 << bit;
        let mut target = vec![0u8; len];
        prop_assert!(decode_piece(id, size, piece, &enc, &mut target[..]).is_err());
        for (i, b) in target.iter().enumerate() {
            prop_assert!(*b == 0 || *b == bytes[i], "byte {} was written unverified", i);
        }
    }
}

/// The holder's encoder reads chunk groups straight into the answer; what it writes must
/// be the library's encoding byte for byte, for any size and piece, after whatever the
/// answer already holds.
#[test]
fn encode_piece_writes_the_library_encoding_byte_for_byte() {
    let sizes = [
        0,
        1,
        1024,
        16 * 1024,
        16 * 1024 + 1,
        PIECE_BYTES - 1,
        PIECE_BYTES,
        PIECE_BYTES + 1,
        3 * PIECE_BYTES + 16 * 1024 + 5,
        5 * PIECE_BYTES,
    ];
    for size in sizes {
        let bytes = data(size as usize, 3);
        let (id, ob) = outboard_of(&bytes);
        let tree = tree(size);
        for piece in 0..piece_count(size) {
            let mut want = Vec::new();
            let outboard = PostOrderOutboard {
                root: blake3::Hash::from_bytes(id.0),
                tree,
                data: &ob[..],
            };
            let chunks = piece_chunks(size, piece);
            bao_tree::io::sync::encode_ranges(&bytes[..], outboard, &chunks, &mut want).unwrap();
            let mut got = b"head".to_vec();
            encode_piece_at(id, size, &bytes[..], &ob[..], piece, &mut got, 4).unwrap();
            assert_eq!(&got[..4], b"head", "size {size} piece {piece}");
            assert!(got[4..] == want[..], "size {size} piece {piece}");
        }
    }
}

/// The receiver's decoder reads chunk groups straight from the answer; it must accept what
/// bao-tree's decoder accepts and write the same bytes and hashes, for any size and piece.
#[test]
fn decode_piece_writes_what_the_library_decoder_writes() {
    for size in [
        0,
        1,
        16 * 1024 + 1,
        PIECE_BYTES,
        PIECE_BYTES + 1,
        3 * PIECE_BYTES + 16 * 1024 + 5,
    ] {
        let bytes = data(size as usize, 9);
        let (id, ob) = outboard_of(&bytes);
        let tree = tree(size);
        let (mut want_data, mut got_data) = (vec![0u8; bytes.len()], vec![0u8; bytes.len()]);
        let (mut want_ob, mut got_ob) = (vec![0u8; ob.len()], vec![0u8; ob.len()]);
        // A reused, dirty answer buffer encodes the same.
        let mut enc = vec![0xAA; 3 * PIECE_BYTES as usize];
        for piece in 0..piece_count(size) {
            encode_piece_at(id, size, &bytes[..], &ob[..], piece, &mut enc, 2).unwrap();
            let piece_enc = &enc[2..];
            let outboard = PostOrderOutboard {
                root: blake3::Hash::from_bytes(id.0),
                tree,
                data: &mut want_ob[..],
            };
            let chunks = piece_chunks(size, piece);
            bao_tree::io::sync::decode_ranges(piece_enc, &chunks, &mut want_data[..], outboard)
                .unwrap();
            decode_piece_with_outboard(
                id,
                size,
                piece,
                piece_enc,
                &mut got_data[..],
                &mut got_ob[..],
            )
            .unwrap();
        }
        assert!(got_data == bytes, "size {size}: data");
        assert!(want_data == got_data, "size {size}: data as the library");
        assert!(want_ob == got_ob, "size {size}: outboard as the library");
        assert!(got_ob == ob, "size {size}: the whole outboard");
    }
}
