//! The roster life cycle through the real binary: create from the CICA template with
//! generated keys, sign, verify, tamper, show, edit.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Every this many bytes of the signed roster file, one is flipped and verify must fail.
const FLIP_STRIDE_BYTES: usize = 97;

fn hotline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hotline"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("HOTLINE_ROSTER_KEY")
        .output()
        .expect("the hotline binary runs")
}

fn ok(args: &[&str]) -> String {
    let out = hotline(args);
    assert!(
        out.status.success(),
        "hotline {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn fail(args: &[&str]) -> String {
    let out = hotline(args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "hotline {args:?} should fail with status 1; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8(out.stderr).expect("UTF-8 errors");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn template() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/cica-roster.toml")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temporary path")
}

struct Setup {
    _dir: tempfile::TempDir,
    keys: PathBuf,
    draft: PathBuf,
    signed: PathBuf,
    roster_pub: PathBuf,
    roster_key: PathBuf,
}

/// Creates a draft from the CICA template (generating every key), a roster signing key,
/// and a signed roster.
fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys");
    let secrets = dir.path().join("secrets");
    let draft = dir.path().join("draft.toml");
    let signed = dir.path().join("roster.signed");

    let out = ok(&[
        "roster",
        "create",
        "--from",
        s(&template()),
        "--keys",
        s(&keys),
        "--generate",
        "--out",
        s(&draft),
    ]);
    assert!(out.contains("38 participants"), "{out}");

    let roster_hex = ok(&["keygen", "--id", "roster-signing", "--out", s(&secrets)]);
    let roster_hex = roster_hex.trim().to_owned();
    assert_eq!(roster_hex.len(), 64);
    let roster_key = secrets.join("roster-signing.key");
    let roster_pub = secrets.join("roster-signing.pub");

    let out = ok(&[
        "roster",
        "sign",
        "--roster",
        s(&draft),
        "--key",
        s(&roster_key),
        "--out",
        s(&signed),
    ]);
    assert!(out.contains("version 1"), "{out}");
    assert!(out.contains("38 participants"), "{out}");
    assert!(out.contains(&roster_hex), "{out}");

    Setup {
        _dir: dir,
        keys,
        draft,
        signed,
        roster_pub,
        roster_key,
    }
}

fn show_json(file: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["roster", "show", s(file), "--json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(&args)).expect("show --json prints JSON")
}

#[test]
fn create_sign_verify_and_every_flipped_byte_fails() {
    let t = setup();
    let pinned_hex = std::fs::read_to_string(&t.roster_pub).expect("read pub");
    let pinned_hex = pinned_hex.trim();

    // Verify by hex and by file.
    let out = ok(&["roster", "verify", s(&t.signed), "--roster-key", pinned_hex]);
    assert_eq!(
        out.trim(),
        format!("OK: roster version 1, 38 participants, signed by {pinned_hex}")
    );
    ok(&[
        "roster",
        "verify",
        s(&t.signed),
        "--roster-key",
        s(&t.roster_pub),
    ]);

    // Another key (here a participant's) must not verify.
    let err = fail(&[
        "roster",
        "verify",
        s(&t.signed),
        "--roster-key",
        s(&t.keys.join("SEC.pub")),
    ]);
    assert!(err.contains("roster.signed"), "{err}");
    assert!(
        err.contains("not by the key given with --roster-key"),
        "{err}"
    );

    let original = std::fs::read(&t.signed).expect("read signed roster");
    let tampered = t.signed.with_extension("tampered");
    let mut positions: Vec<usize> = (0..original.len()).step_by(FLIP_STRIDE_BYTES).collect();
    positions.push(original.len() - 1);
    for &i in &positions {
        let mut bytes = original.clone();
        bytes[i] ^= 0x01;
        std::fs::write(&tampered, &bytes).expect("write tampered copy");
        let err = fail(&["roster", "verify", s(&tampered), "--roster-key", pinned_hex]);
        assert!(err.contains("roster.tampered"), "byte {i}: {err}");
    }
    // Truncated and extended files fail too.
    std::fs::write(&tampered, &original[..original.len() - 1]).expect("write");
    fail(&["roster", "verify", s(&tampered), "--roster-key", pinned_hex]);
    let mut longer = original.clone();
    longer.push(0);
    std::fs::write(&tampered, &longer).expect("write");
    fail(&["roster", "verify", s(&tampered), "--roster-key", pinned_hex]);
}

#[test]
fn show_lists_the_cica_roster() {
    let t = setup();
    let pinned = s(&t.roster_pub);
    let v = show_json(&t.signed, &["--roster-key", pinned]);
    assert_eq!(v["kind"], "signed");
    assert_eq!(v["verified"], true);
    assert_eq!(v["network"], "CICA");
    assert_eq!(v["version"], 1);

    let participants = v["participants"].as_array().expect("participants");
    assert_eq!(participants.len(), 38);
    let count = |role: &str| participants.iter().filter(|p| p["role"] == role).count();
    assert_eq!(count("member"), 26);
    assert_eq!(count("observer"), 11);
    assert_eq!(count("secretariat"), 1);
    assert!(participants.iter().all(|p| p["revoked"] == false));
    assert!(participants
        .iter()
        .all(|p| p["keys"].as_array().expect("keys").len() == 1));
    let sec = participants
        .iter()
        .find(|p| p["id"] == "SEC")
        .expect("Secretariat listed");
    assert_eq!(sec["role"], "secretariat");

    let groups = v["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 10);
    let smes = groups.iter().find(|g| g["name"] == "smes").expect("smes");
    assert_eq!(smes["members"], serde_json::json!(["RUS", "THA", "KAZ"]));

    // Unverified show still works and says so; the table has every participant.
    assert_eq!(show_json(&t.signed, &[])["verified"], false);
    let table = ok(&["roster", "show", s(&t.signed)]);
    assert!(table.contains("NOT VERIFIED"), "{table}");
    assert!(table.contains("TURKPA"), "{table}");
    assert!(table.contains("new-challenges-and-threats"), "{table}");
    // A draft shows too.
    assert_eq!(show_json(&t.draft, &[])["kind"], "draft");
}

#[test]
fn edit_resign_and_revoke() {
    let t = setup();
    let dir = t.keys.parent().expect("parent");
    ok(&["keygen", "--id", "KHM2", "--out", s(dir)]);
    // keygen refuses to overwrite without --force.
    let err = fail(&["keygen", "--id", "KHM2", "--out", s(dir)]);
    assert!(err.contains("KHM2.key"), "{err}");
    ok(&["keygen", "--id", "KHM2", "--out", s(dir), "--force"]);

    ok(&[
        "roster",
        "add",
        "--roster",
        s(&t.draft),
        "--id",
        "NEW",
        "--name",
        "New Observer",
        "--role",
        "observer",
        "--key",
        s(&dir.join("KHM2.pub")),
    ]);
    // A key already on the roster is refused.
    let err = fail(&[
        "roster",
        "add",
        "--roster",
        s(&t.draft),
        "--id",
        "DUP",
        "--name",
        "Duplicate",
        "--role",
        "member",
        "--key",
        s(&t.keys.join("KAZ.pub")),
    ]);
    assert!(err.contains("KAZ"), "{err}");
    ok(&["roster", "revoke", "--roster", s(&t.draft), "--id", "UKR"]);
    let err = fail(&["roster", "revoke", "--roster", s(&t.draft), "--id", "ZZZ"]);
    assert!(err.contains("ZZZ"), "{err}");
    ok(&[
        "roster",
        "group",
        "--roster",
        s(&t.draft),
        "--name",
        "tourism",
        "--members",
        "TJK,NEW",
    ]);
    let err = fail(&[
        "roster",
        "group",
        "--roster",
        s(&t.draft),
        "--name",
        "x",
        "--members",
        "TJK,QQQ",
    ]);
    assert!(err.contains("QQQ"), "{err}");

    let out = ok(&[
        "roster",
        "sign",
        "--roster",
        s(&t.draft),
        "--key",
        s(&t.roster_key),
        "--out",
        s(&t.signed),
        "--version",
        "2",
    ]);
    assert!(out.contains("version 2"), "{out}");
    let v = show_json(&t.signed, &["--roster-key", s(&t.roster_pub)]);
    assert_eq!(v["version"], 2);
    let participants = v["participants"].as_array().expect("participants");
    assert_eq!(participants.len(), 39);
    let ukr = participants.iter().find(|p| p["id"] == "UKR").expect("UKR");
    assert_eq!(ukr["revoked"], true);
    let tourism = v["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .find(|g| g["name"] == "tourism")
        .expect("tourism")
        .clone();
    assert_eq!(tourism["members"], serde_json::json!(["TJK", "NEW"]));
}

#[test]
fn bad_inputs_fail_cleanly() {
    let t = setup();
    // The template has no keys: it cannot be signed, and the error names a participant.
    let err = fail(&[
        "roster",
        "sign",
        "--roster",
        s(&template()),
        "--key",
        s(&t.roster_key),
        "--out",
        s(&t.signed.with_extension("x")),
    ]);
    assert!(err.contains("has no keys"), "{err}");

    // A world-readable secret key is refused.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&t.roster_key, std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let err = fail(&[
            "roster",
            "sign",
            "--roster",
            s(&t.draft),
            "--key",
            s(&t.roster_key),
            "--out",
            s(&t.signed),
        ]);
        assert!(err.contains("roster-signing.key"), "{err}");
    }

    // A draft with a bad role: the error names the file and the line.
    let text = std::fs::read_to_string(&t.draft).expect("read draft");
    let line = text
        .lines()
        .position(|l| l.contains("role = \"observer\""))
        .expect("an observer")
        + 1;
    std::fs::write(
        &t.draft,
        text.replacen("role = \"observer\"", "role = \"guest\"", 1),
    )
    .expect("write");
    let err = fail(&["roster", "show", s(&t.draft)]);
    assert!(err.contains(&format!("draft.toml:{line}:")), "{err}");

    // A draft is not a signed roster.
    let err = fail(&[
        "roster",
        "verify",
        s(&t.draft),
        "--roster-key",
        s(&t.roster_pub),
    ]);
    assert!(err.contains("draft.toml"), "{err}");

    // Missing files and garbage are errors, not panics.
    fail(&[
        "roster",
        "verify",
        "/nonexistent/roster.signed",
        "--roster-key",
        s(&t.roster_pub),
    ]);
    std::fs::write(&t.signed, [0u8; 3]).expect("write");
    fail(&["roster", "show", s(&t.signed)]);
    fail(&[
        "roster",
        "create",
        "--from",
        s(&template()),
        "--keys",
        "/nonexistent",
        "--out",
        "x",
    ]);
}

/// Both halves of a key pair are 64 hexadecimal digits; the file name tells them apart.
/// A secret key file is never taken for a public key (it would be signed into the roster,
/// or printed in an error), nor a public key file for a secret one.
#[test]
fn a_secret_key_file_is_not_a_public_key_nor_the_reverse() {
    let t = setup();
    let dir = t.draft.parent().expect("dir").join("new-keys");
    ok(&["keygen", "--id", "NEW", "--out", s(&dir)]);
    let seed = std::fs::read_to_string(dir.join("NEW.key")).expect("read");
    let seed = seed.trim();
    let draft_before = std::fs::read(&t.draft).expect("read draft");
    let err = fail(&[
        "roster",
        "add",
        "--roster",
        s(&t.draft),
        "--id",
        "NEW",
        "--name",
        "New Observer",
        "--role",
        "observer",
        "--key",
        s(&dir.join("NEW.key")),
    ]);
    assert!(err.contains("NEW.pub") && !err.contains(seed), "{err}");
    assert_eq!(std::fs::read(&t.draft).expect("read draft"), draft_before);

    let roster_seed = std::fs::read_to_string(&t.roster_key).expect("read");
    let err = fail(&[
        "roster",
        "verify",
        s(&t.signed),
        "--roster-key",
        s(&t.roster_key),
    ]);
    assert!(
        err.contains("roster-signing.pub") && !err.contains(roster_seed.trim()),
        "{err}"
    );

    // Signing with the public half is refused by name, with no advice to chmod it.
    let err = fail(&[
        "roster",
        "sign",
        "--roster",
        s(&t.draft),
        "--key",
        s(&t.roster_pub),
        "--out",
        s(&t.signed.with_extension("x")),
    ]);
    assert!(
        err.contains("roster-signing.key") && !err.contains("chmod"),
        "{err}"
    );
}

/// `--generate` creates keys only for participants with none: keys a template lists are
/// kept, both of them during a rotation, and no key pair is made for that participant.
#[test]
fn generate_keeps_the_keys_a_template_lists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (keys, draft) = (dir.path().join("keys"), dir.path().join("draft.toml"));
    let theirs = dir.path().join("theirs");
    let old = ok(&["keygen", "--id", "OLD", "--out", s(&theirs)]);
    let new = ok(&["keygen", "--id", "NEW", "--out", s(&theirs)]);
    let (old, new) = (old.trim(), new.trim());
    let template = dir.path().join("template.toml");
    std::fs::write(
        &template,
        format!(
            "network = \"CICA\"\nversion = 1\n\n\
             [[participants]]\nid = \"KAZ\"\nname = \"Kazakhstan\"\nrole = \"member\"\n\
             keys = [\"{old}\", \"{new}\"]\n\n\
             [[participants]]\nid = \"SEC\"\nname = \"Secretariat\"\nrole = \"secretariat\"\n\
             keys = []\n"
        ),
    )
    .expect("write");
    let out = ok(&[
        "roster",
        "create",
        "--from",
        s(&template),
        "--keys",
        s(&keys),
        "--generate",
        "--out",
        s(&draft),
    ]);
    assert!(out.contains("(1 key pair(s) generated"), "{out}");
    let shown = show_json(&draft, &[]);
    let participants = shown["participants"].as_array().expect("participants");
    let kaz = participants.iter().find(|p| p["id"] == "KAZ").expect("KAZ");
    assert_eq!(kaz["keys"], serde_json::json!([old, new]), "{shown}");
    assert!(!keys.join("KAZ.key").exists() && !keys.join("KAZ.pub").exists());
    let sec = participants.iter().find(|p| p["id"] == "SEC").expect("SEC");
    let generated = std::fs::read_to_string(keys.join("SEC.pub")).expect("SEC.pub");
    assert_eq!(
        sec["keys"],
        serde_json::json!([generated.trim()]),
        "{shown}"
    );
}

/// `roster sign --out` never overwrites the draft or the roster key, however it is
/// spelled, and never writes a file named like a key.
#[test]
fn sign_refuses_to_write_over_its_inputs_or_as_a_key_file() {
    let t = setup();
    let dir = t.draft.parent().expect("dir").to_owned();
    let (key_before, draft_before) = (
        std::fs::read(&t.roster_key).expect("read key"),
        std::fs::read(&t.draft).expect("read draft"),
    );
    let link = dir.join("link-to-key");
    std::os::unix::fs::symlink(&t.roster_key, &link).expect("symlink");
    let secrets = t.roster_key.parent().expect("secrets");
    for (out, says) in [
        (t.roster_key.clone(), "--key file"),
        (t.draft.clone(), "--roster file"),
        (dir.join(".").join("draft.toml"), "--roster file"),
        (
            secrets.join("..").join("secrets/roster-signing.key"),
            "key file",
        ),
        (link.clone(), "--key file"),
        (dir.join("new.pub"), "named like a key file"),
        (dir.join("NEW.KEY"), "named like a key file"),
    ] {
        let err = fail(&[
            "roster",
            "sign",
            "--roster",
            s(&t.draft),
            "--key",
            s(&t.roster_key),
            "--out",
            s(&out),
        ]);
        assert!(
            err.contains(says) && err.contains("nothing was written"),
            "{out:?}: {err}"
        );
    }
    assert_eq!(std::fs::read(&t.roster_key).expect("read key"), key_before);
    assert_eq!(std::fs::read(&t.draft).expect("read draft"), draft_before);
    assert!(!dir.join("new.pub").exists() && !dir.join("NEW.KEY").exists());
    // The roster key still signs.
    ok(&[
        "roster",
        "sign",
        "--roster",
        s(&t.draft),
        "--key",
        s(&link),
        "--out",
        s(&t.signed),
        "--version",
        "2",
    ]);
}

/// `HOTLINE_ROSTER_KEY` pins the roster key for `roster show` and `roster verify` (man
/// page, ENVIRONMENT), so an operator sets it once in a shell. A draft has no signature to
/// check it against: `roster show DRAFT` with the variable set was refused (`a draft is not
/// signed; --roster-key applies to signed roster files`), as if the flag had been given,
/// although the same shell shows signed rosters, verified. The flag given for a draft is
/// still refused.
#[test]
fn the_roster_key_from_the_environment_does_not_stop_showing_a_draft() {
    let t = setup();
    let show = |file: &Path, extra: &[&str]| {
        let mut args = vec!["roster", "show", s(file), "--json"];
        args.extend_from_slice(extra);
        Command::new(env!("CARGO_BIN_EXE_hotline"))
            .args(&args)
            .env("RUST_LOG", "warn")
            .env("HOTLINE_ROSTER_KEY", s(&t.roster_pub))
            .output()
            .expect("the hotline binary runs")
    };
    let out = show(&t.draft, &[]);
    assert!(
        out.status.success(),
        "roster show DRAFT with HOTLINE_ROSTER_KEY set: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["kind"], "draft");
    // A signed roster is verified against the variable's key.
    let out = show(&t.signed, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["verified"], true);
    // The flag itself, for a draft, is a mistake worth saying.
    let err = fail(&[
        "roster",
        "show",
        s(&t.draft),
        "--roster-key",
        s(&t.roster_pub),
    ]);
    assert!(err.contains("a draft is not signed"), "{err}");
}

/// `roster create --keys DIR` run by a user who may not look into DIR (the key ceremony's
/// directory, mode 0700, another account's) says so, naming DIR and the system's reason. It
/// took every key file there for missing: "no public key file in DIR for 38 participant(s)",
/// and with `--generate` went on to try writing new key pairs beside the real ones.
#[test]
fn a_key_directory_out_of_reach_is_not_called_empty() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // The template inside the directory, which the user running the command can read (the
    // source tree may be out of reach for `nobody`).
    std::fs::copy(template(), d.join("template.toml")).expect("template");
    let keys = d.join("ceremony-keys");
    ok(&["keygen", "--id", "KAZ", "--out", s(&keys)]);
    for extra in [&[][..], &["--generate"]] {
        let mut args = vec![
            "roster",
            "create",
            "--from",
            "template.toml",
            "--keys",
            "ceremony-keys",
            "--out",
            "draft.toml",
        ];
        args.extend_from_slice(extra);
        let out = super::operator::hotline_locked_out(d, &keys, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("no public key file"),
            "{args:?}: the key files are there: {stderr}"
        );
        assert!(
            stderr.contains("ceremony-keys") && stderr.contains("Permission denied"),
            "{args:?}: names the directory and why: {stderr}"
        );
        assert!(!d.join("draft.toml").exists(), "{args:?}: no draft written");
    }
}

/// `roster create --keys DIR` with a DIR that does not exist says so, naming DIR, and
/// writes no draft. It said "no public key file in DIR for 38 participant(s)", as if DIR
/// were there and empty; and with a template listing every key it wrote the draft from the
/// template's keys, the mistyped DIR unnoticed. A DIR that is a file is named as one.
#[test]
fn a_key_directory_that_does_not_exist_is_named_as_missing() {
    let t = setup();
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-keys");
    let not_dir = dir.path().join("a-file");
    std::fs::write(&not_dir, b"").expect("file");
    let out = dir.path().join("draft.toml");
    // The CICA template lists no keys; the draft `setup` wrote lists every one.
    for from in [template(), t.draft.clone()] {
        let create = |keys: &Path| {
            fail(&[
                "roster",
                "create",
                "--from",
                s(&from),
                "--keys",
                s(keys),
                "--out",
                s(&out),
            ])
        };
        let err = create(&missing);
        assert!(
            err.contains(&format!(
                "key directory {} does not exist",
                missing.display()
            )),
            "{from:?}: {err}"
        );
        assert!(!err.contains("no public key file"), "{from:?}: {err}");
        let err = create(&not_dir);
        assert!(
            err.contains(&format!(
                "key directory {} is not a directory",
                not_dir.display()
            )),
            "{from:?}: {err}"
        );
        assert!(!out.exists(), "{from:?}: no draft written");
    }
    assert!(!missing.exists(), "nothing created without --generate");
    // The directory `setup` generated its keys in still serves.
    ok(&[
        "roster",
        "create",
        "--from",
        s(&template()),
        "--keys",
        s(&t.keys),
        "--out",
        s(&out),
    ]);
}

/// `roster show` of a signed roster nobody has verified yet (one that came by e-mail, the
/// file a node is about to be given) printed its participants' and groups' names as they
/// were: a name holding terminal controls could move the cursor up and write over the
/// `NOT VERIFIED` line printed above the table, or reorder it with a bidirectional
/// override, so that a forged roster read as verified. The names are shown escaped, as
/// every other command shows another party's text; `--json` keeps them as they are.
#[test]
fn a_rosters_names_cannot_drive_the_terminal() {
    let t = setup();
    let dir = t.keys.parent().expect("parent");
    ok(&["keygen", "--id", "EVIL", "--out", s(dir)]);
    // Cursor up two lines, erase it, and write a verdict; then a right-to-left override.
    let name = "Evil\u{1b}[2A\u{1b}[2K\rsigned by x, verified\u{9b}1m\u{202e}lamron";
    ok(&[
        "roster",
        "add",
        "--roster",
        s(&t.draft),
        "--id",
        "EVIL",
        "--name",
        name,
        "--role",
        "observer",
        "--key",
        s(&dir.join("EVIL.pub")),
    ]);
    let group = "grp\u{1b}[1A\u{202e}";
    ok(&[
        "roster",
        "group",
        "--roster",
        s(&t.draft),
        "--name",
        group,
        "--members",
        "EVIL",
    ]);
    ok(&[
        "roster",
        "sign",
        "--roster",
        s(&t.draft),
        "--key",
        s(&t.roster_key),
        "--out",
        s(&t.signed),
        "--version",
        "2",
    ]);
    for file in [&t.signed, &t.draft] {
        let table = ok(&["roster", "show", s(file)]);
        let driving: Vec<char> = table
            .chars()
            .filter(|c| {
                (c.is_control() && *c != '\n')
                    || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
            })
            .collect();
        assert!(driving.is_empty(), "{file:?}: {driving:?} in\n{table}");
        assert!(table.contains(r"Evil\u{1b}[2A"), "{table}");
        assert!(table.contains(r"grp\u{1b}[1A\u{202e}"), "{table}");
        // The columns are counted on what is printed: the group's members start after it.
        let line = table
            .lines()
            .find(|l| l.starts_with("grp"))
            .expect("the group's line");
        assert!(line.ends_with("  EVIL"), "{line}");
        // JSON is for programs, which get the names as they are.
        let v = show_json(file, &[]);
        let evil = v["participants"]
            .as_array()
            .expect("participants")
            .iter()
            .find(|p| p["id"] == "EVIL")
            .expect("EVIL listed");
        assert_eq!(evil["name"], name);
    }
}

/// `roster show` of an empty file (a signed roster whose copy failed): it has no NUL byte
/// to sniff, so it was read as a draft and refused as one (`missing field`), which sent the
/// operator looking for a draft; a node, a relay and `config check` refuse the same file
/// as empty. `roster show` says so too.
#[test]
fn roster_show_refuses_an_empty_file_as_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("roster.signed");
    std::fs::write(&empty, b"").expect("write");
    let stderr = fail(&["roster", "show", s(&empty)]);
    assert!(
        stderr.contains("roster.signed: is empty (0 bytes)"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("missing field") && !stderr.contains("draft"),
        "{stderr}"
    );
}
