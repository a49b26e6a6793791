//! The fuzz seed corpus, `fuzz/corpus/<target>/seed-*`: generated here from the fixtures so
//! it follows the wire format, compared like the test vectors (`HOTLINE_REGEN_VECTORS=1`
//! rewrites it), and run through the shared harnesses so they are exercised without
//! cargo-fuzz. The other files in those folders, the committed minimised corpus (`min-*`) and
//! whatever a local fuzzing run added, are run too but not compared; `fuzz/.gitignore` keeps
//! the latter out of commits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hotline_proto::codec;
use hotline_proto::frame::{decode_frame, encode_frame, NodeToRelay, RelayToNode};
use hotline_proto::limits::FRAME_BYTES_MAX;
use hotline_proto::sign::Signed;

use crate::fixtures;
use crate::harness::{self, SELECT_AUTH, SELECT_ENVELOPE, SELECT_RECEIPT, SELECT_ROSTER};
use crate::vectors::REGEN_ENV;

fn dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// The seeds of each target, by file name.
fn generate() -> BTreeMap<&'static str, BTreeMap<String, Vec<u8>>> {
    let mut frames = BTreeMap::new();
    let node = fixtures::node_frames();
    let relay = fixtures::relay_frames();
    for (i, f) in node.iter().enumerate() {
        frames.insert(
            format!("seed-node-{i:02}"),
            encode_frame(f).expect("fixture frames encode"),
        );
    }
    for (i, f) in relay.iter().enumerate() {
        frames.insert(
            format!("seed-relay-{i:02}"),
            encode_frame(f).expect("fixture frames encode"),
        );
    }
    // A stream of several frames, as a session reads them.
    let stream: Vec<u8> = [&relay[1], &relay[2], &relay[6], &relay[10]]
        .iter()
        .flat_map(|f| encode_frame(*f).expect("fixture frames encode"))
        .collect();
    frames.insert("seed-relay-stream".into(), stream);

    let mut signed = BTreeMap::new();
    let carrier = |select: u8, bytes: Result<Vec<u8>, _>| {
        [vec![select], bytes.expect("fixture carriers encode")].concat()
    };
    signed.insert(
        "seed-envelope".into(),
        carrier(
            SELECT_ENVELOPE,
            codec::encode(&fixtures::signed_alert(), FRAME_BYTES_MAX),
        ),
    );
    signed.insert(
        "seed-receipt".into(),
        carrier(
            SELECT_RECEIPT,
            codec::encode(&fixtures::signed_receipt(), FRAME_BYTES_MAX),
        ),
    );
    signed.insert(
        "seed-roster".into(),
        carrier(
            SELECT_ROSTER,
            codec::encode(&fixtures::signed_roster(), FRAME_BYTES_MAX),
        ),
    );
    signed.insert(
        "seed-auth".into(),
        carrier(
            SELECT_AUTH,
            codec::encode(&fixtures::signed_auth(), FRAME_BYTES_MAX),
        ),
    );
    let sessions = harness::session_seeds().into_iter().collect();
    BTreeMap::from([
        ("frame_decoder", frames),
        ("verify_decoded", signed),
        ("session_frames", sessions),
    ])
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .map(|e| e.expect("corpus entry is readable"))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (
                name,
                std::fs::read(e.path()).expect("corpus file is readable"),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn seed_corpus_is_up_to_date() {
    let regen = std::env::var(REGEN_ENV).as_deref() == Ok("1");
    for (target, seeds) in generate() {
        let dir = dir(target);
        if regen {
            std::fs::create_dir_all(&dir).expect("corpus dir is writable");
            for (name, _) in files(&dir) {
                if name.starts_with("seed-") && !seeds.contains_key(&name) {
                    std::fs::remove_file(dir.join(name)).expect("stale seed is removable");
                }
            }
            for (name, bytes) in &seeds {
                std::fs::write(dir.join(name), bytes).expect("corpus file is writable");
            }
            continue;
        }
        let committed: BTreeMap<String, Vec<u8>> = files(&dir)
            .into_iter()
            .filter(|(n, _)| n.starts_with("seed-"))
            .collect();
        assert!(
            committed == seeds,
            "fuzz/corpus/{target}/seed-* differs from the generator; if the wire format \
             changed on purpose, rerun with {REGEN_ENV}=1"
        );
    }
}

#[test]
fn frame_seeds_decode() {
    for (name, bytes) in &generate()["frame_decoder"] {
        let payload = &bytes[4..];
        let ok = if name.starts_with("seed-node-") {
            decode_frame::<NodeToRelay>(payload).is_ok()
        } else if name == "seed-relay-stream" {
            true
        } else {
            decode_frame::<RelayToNode>(payload).is_ok()
        };
        assert!(ok, "{name}");
    }
    let signed = &generate()["verify_decoded"];
    let env: Signed<hotline_proto::Envelope> =
        codec::decode(&signed["seed-envelope"][1..], FRAME_BYTES_MAX).expect("decodes");
    harness::roster()
        .verify_envelope(&env)
        .expect("seed verifies");
}

/// Every file in the corpus folders, seeds and committed minimised corpora alike, through
/// every harness.
#[test]
fn harnesses_accept_the_corpus() {
    for target in ["frame_decoder", "verify_decoded", "session_frames"] {
        for (_, bytes) in files(&dir(target)) {
            harness::frame_decoder(&bytes);
            harness::verify_decoded(&bytes);
            harness::session_frames(&bytes);
        }
    }
}

/// The session seeds reach every path of the `session_frames` harness: acceptance, each
/// kind of refusal, receipts, pings and the closing `Hello`.
#[test]
fn session_seeds_reach_every_path() {
    use hotline_proto::RejectCode::*;
    let tally: BTreeMap<String, harness::SessionTally> = harness::session_seeds()
        .into_iter()
        .map(|(name, bytes)| (name, harness::session_frames(&bytes)))
        .collect();
    let t = &tally["seed-session-kaz"];
    assert_eq!((t.accepted, t.pongs, t.closed), (2, 1, true), "{t:?}");
    let t = &tally["seed-session-ind"];
    assert_eq!(
        (t.receipts, t.refused.as_slice()),
        (1, &[NotAuthor][..]),
        "{t:?}"
    );
    let t = &tally["seed-session-un"];
    assert_eq!(t.accepted, 1, "{t:?}");
    assert_eq!(t.refused, [PolicyDenied, PolicyDenied], "{t:?}");
    let t = &tally["seed-session-kaz-resign"];
    assert_eq!((t.accepted, t.receipts), (1, 1), "{t:?}");
    assert_eq!(t.refused, [FutureTimestamp], "{t:?}");
    let t = &tally["seed-session-sec"];
    assert_eq!((t.accepted, t.closed), (1, false), "{t:?}");
}
