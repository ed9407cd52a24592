use super::*;
use crate::blob::PIECE_BYTES;

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
}

fn stores() -> (tempfile::TempDir, BlobStore, BlobStore) {
    let dir = tempfile::tempdir().unwrap();
    let a = BlobStore::open(dir.path().join("a")).unwrap();
    let b = BlobStore::open(dir.path().join("b")).unwrap();
    (dir, a, b)
}

#[test]
fn imported_files_are_listed_and_served_by_piece() {
    let (dir, a, b) = stores();
    let bytes = data(3 * PIECE_BYTES as usize + 777);
    let file = dir.path().join("video.mp4");
    fs::write(&file, &bytes).unwrap();
    let (id, size) = a.import_file(&file).unwrap();
    assert_eq!(id, ContentId::of(&bytes));
    assert_eq!(size, bytes.len() as u64);
    assert_eq!(a.list(), vec![(id, size)]);
    assert!(file.exists(), "the original stays where it was");

    let mut part = b.partial(id, size).unwrap();
    assert_eq!(part.missing(), vec![0, 1, 2, 3]);
    for piece in part.missing() {
        part.add_piece(piece, &a.encode_piece(&id, piece).unwrap())
            .unwrap();
    }
    assert_eq!(part.finish().unwrap(), size);
    assert_eq!(fs::read(b.data_path(&id)).unwrap(), bytes);
    assert_eq!(b.progress(&id), Some((size, size)));
    // What b fetched it can serve on.
    assert_eq!(
        b.encode_piece(&id, 3).unwrap(),
        a.encode_piece(&id, 3).unwrap()
    );
    assert!(matches!(
        b.encode_piece(&ContentId::of(b"x"), 0),
        Err(StoreError::NotFound(_))
    ));
}

#[test]
fn a_download_resumes_where_it_stopped() {
    let (_dir, a, b) = stores();
    let bytes = data(4 * PIECE_BYTES as usize);
    let (id, size) = a.import_bytes(&bytes).unwrap();
    {
        let mut part = b.partial(id, size).unwrap();
        part.add_piece(2, &a.encode_piece(&id, 2).unwrap()).unwrap();
        part.add_piece(0, &a.encode_piece(&id, 0).unwrap()).unwrap();
        // Dropped here: the node stopped.
    }
    assert_eq!(b.progress(&id), Some((2 * PIECE_BYTES, size)));
    let b = BlobStore::open(b.dir().to_path_buf()).unwrap();
    let mut part = b.partial(id, size).unwrap();
    assert_eq!(part.missing(), vec![1, 3], "only what was not kept");
    assert_eq!(part.have_bytes(), 2 * PIECE_BYTES);
    for piece in part.missing() {
        part.add_piece(piece, &a.encode_piece(&id, piece).unwrap())
            .unwrap();
    }
    part.finish().unwrap();
    assert_eq!(fs::read(b.data_path(&id)).unwrap(), bytes);
}

#[test]
fn a_corrupt_piece_is_refused_and_the_piece_stays_missing() {
    let (_dir, a, b) = stores();
    let bytes = data(2 * PIECE_BYTES as usize);
    let (id, size) = a.import_bytes(&bytes).unwrap();
    let mut part = b.partial(id, size).unwrap();
    let mut bad = a.encode_piece(&id, 1).unwrap();
    let n = bad.len();
    bad[n - 10] ^= 0xff;
    assert!(matches!(
        part.add_piece(1, &bad),
        Err(StoreError::Piece(PieceError::Corrupt { piece: 1, .. }))
    ));
    assert_eq!(part.missing(), vec![0, 1]);
    // Pieces of another blob do not fit either.
    let (other, _) = a.import_bytes(&data(2 * PIECE_BYTES as usize + 1)).unwrap();
    assert!(
        part.add_piece(0, &a.encode_piece(&other, 0).unwrap())
            .is_err()
    );
    assert!(!part.is_complete());
    assert!(part.finish().is_err(), "an incomplete download is no blob");
    assert!(!b.contains(&id));
}

#[test]
fn a_resumed_download_with_another_size_starts_over() {
    let (_dir, a, b) = stores();
    let bytes = data(2 * PIECE_BYTES as usize);
    let (id, size) = a.import_bytes(&bytes).unwrap();
    let mut part = b.partial(id, size).unwrap();
    part.add_piece(0, &a.encode_piece(&id, 0).unwrap()).unwrap();
    drop(part);
    let part = b.partial(id, size + 1).unwrap();
    assert_eq!(part.missing(), vec![0, 1, 2]);
}

#[test]
fn removing_forgets_blob_and_download() {
    let (_dir, a, _b) = stores();
    let (id, _) = a.import_bytes(b"hello").unwrap();
    assert!(a.contains(&id));
    assert_eq!(a.total_bytes(), 5);
    a.remove(&id).unwrap();
    assert!(!a.contains(&id));
    assert!(a.list().is_empty());
    a.remove(&id).unwrap();
}

#[test]
fn a_finished_download_has_the_outboard_hashing_would_give() {
    let (_dir, a, b) = stores();
    let group = 16 * 1024;
    let sizes = [
        0,
        1,
        group - 1,
        group,
        group + 1,
        PIECE_BYTES as usize,
        PIECE_BYTES as usize + 1,
        3 * PIECE_BYTES as usize + 777,
    ];
    for (n, len) in sizes.into_iter().enumerate() {
        let bytes = data(len);
        let (id, size) = a.import_bytes(&bytes).unwrap();
        let mut part = b.partial(id, size).unwrap();
        // Last piece first, then alternating ends: the outboard fills in any order.
        let mut order = part.missing();
        if n % 2 == 1 {
            order.reverse();
        }
        for piece in order {
            part.add_piece(piece, &a.encode_piece(&id, piece).unwrap())
                .unwrap();
        }
        part.finish().unwrap();
        assert_eq!(fs::read(b.data_path(&id)).unwrap(), bytes, "{len} bytes");
        assert_eq!(
            fs::read(b.outboard_path(&id)).unwrap(),
            fs::read(a.outboard_path(&id)).unwrap(),
            "{len} bytes: the outboard built from the pieces is the one hashing gives"
        );
        b.verify(&id).unwrap();
        assert!(!b.part_outboard_path(&id).exists());
    }
}

#[test]
fn verify_finds_a_rotten_blob_and_removes_it() {
    let (_dir, a, _b) = stores();
    let bytes = data(2 * PIECE_BYTES as usize);
    let (id, _) = a.import_bytes(&bytes).unwrap();
    a.verify(&id).unwrap();
    let mut rotten = bytes.clone();
    rotten[12345] ^= 1;
    fs::write(a.data_path(&id), &rotten).unwrap();
    assert!(matches!(
        a.verify(&id),
        Err(StoreError::HashMismatch { want, .. }) if want == id
    ));
    assert!(!a.contains(&id));
    assert!(matches!(a.verify(&id), Err(StoreError::NotFound(_))));
}

#[test]
fn a_download_without_its_outboard_starts_over() {
    let (_dir, a, b) = stores();
    let bytes = data(3 * PIECE_BYTES as usize);
    let (id, size) = a.import_bytes(&bytes).unwrap();
    let mut part = b.partial(id, size).unwrap();
    part.add_piece(1, &a.encode_piece(&id, 1).unwrap()).unwrap();
    drop(part);
    fs::remove_file(b.part_outboard_path(&id)).unwrap();
    let mut part = b.partial(id, size).unwrap();
    assert_eq!(
        part.missing(),
        vec![0, 1, 2],
        "the hashes of piece 1 are gone"
    );
    for piece in part.missing() {
        part.add_piece(piece, &a.encode_piece(&id, piece).unwrap())
            .unwrap();
    }
    part.finish().unwrap();
    b.verify(&id).unwrap();
}

#[test]
fn a_download_under_a_wrong_size_never_finishes() {
    let (_dir, a, b) = stores();
    let bytes = data(2 * PIECE_BYTES as usize + 100);
    let (id, size) = a.import_bytes(&bytes).unwrap();
    for wrong in [size - 1, size + 1, size - 99, 2 * PIECE_BYTES] {
        let mut part = b.partial(id, wrong).unwrap();
        let last = part.missing().len() as u64 - 1;
        let refused = part.missing().into_iter().any(|piece| {
            let honest = a.encode_piece(&id, piece.min(2)).unwrap();
            part.add_piece(piece, &honest).is_err()
        });
        assert!(
            refused,
            "size {wrong}: the last piece ({last}) proves the size"
        );
        assert!(part.finish().is_err());
        assert!(!b.contains(&id));
        b.remove(&id).unwrap();
    }
}

#[test]
fn pieces_land_the_same_written_directly_or_buffered() {
    let (_dir, a, b) = stores();
    let bytes = data(2 * PIECE_BYTES as usize + 4097);
    let (id, size) = a.import_bytes(&bytes).unwrap();
    // 0: direct where the file system allows it; 1: buffered (what a refused direct write
    // falls back to).
    for mode in 0..2 {
        let mut part = b.partial(id, size).unwrap();
        let mut writer = part.writer().unwrap();
        if mode == 1 {
            writer.direct = None;
        }
        for piece in [2, 0, 1] {
            let mut bad = a.encode_piece(&id, piece).unwrap();
            bad[100] ^= 1;
            assert!(writer.write_piece(piece, &bad).is_err());
            writer
                .write_piece(piece, &a.encode_piece(&id, piece).unwrap())
                .unwrap();
            part.mark(piece).unwrap();
        }
        drop(writer);
        part.finish().unwrap();
        assert!(
            fs::read(b.data_path(&id)).unwrap() == bytes,
            "mode {mode}: the blob differs"
        );
        b.verify(&id).unwrap();
        b.remove(&id).unwrap();
    }
}

/// A piece verified as it streams in (as a fetch does) is written as it is; a piece of
/// another blob is refused.
#[test]
fn pieces_verified_as_they_stream_in_make_the_blob() {
    let (_dir, a, b) = stores();
    let bytes = data(3 * PIECE_BYTES as usize + 77);
    let (id, size) = a.import_bytes(&bytes).unwrap();
    let (other, other_size) = a.import_bytes(&data(5000)).unwrap();
    let mut part = b.partial(id, size).unwrap();
    let mut writer = part.writer().unwrap();
    let mut buf = blob::PieceBuf::new();
    for piece in 0..4 {
        let encoded = a.encode_piece(&id, piece).unwrap();
        let mut stream = &encoded[..];
        let mut decoder = blob::PieceDecoder::new(id, size, piece, buf).unwrap();
        while let Some(need) = decoder.need() {
            match need {
                blob::Need::Pair => {
                    let (pair, rest) = stream.split_first_chunk::<64>().unwrap();
                    decoder.pair(pair).unwrap();
                    stream = rest;
                }
                blob::Need::Group(len) => {
                    decoder.group_slot().copy_from_slice(&stream[..len]);
                    decoder.group().unwrap();
                    stream = &stream[len..];
                }
            }
        }
        assert!(stream.is_empty());
        let verified = decoder.finish().unwrap();
        writer.write_verified(&verified).unwrap();
        part.mark(piece).unwrap();
        buf = verified.into_buf();
    }
    let foreign = blob::decode_slice(
        other,
        other_size,
        0,
        &a.encode_piece(&other, 0).unwrap(),
        buf,
    )
    .unwrap();
    assert!(writer.write_verified(&foreign).is_err());
    drop(writer);
    part.finish().unwrap();
    assert!(fs::read(b.data_path(&id)).unwrap() == bytes);
    b.verify(&id).unwrap();
}
