//! The fake OSS must accept what real OSS accepts and reject what it rejects,
//! or the upload tests prove nothing: its self-test drives it with the official
//! SDKs (oss2, alibabacloud-oss-v2) as clients, through every accept/reject case.

mod common;

#[test]
fn fake_oss_agrees_with_the_official_sdks() {
    let out = std::process::Command::new(common::venv_python())
        .arg(common::repo_root().join("tests/fakes/fake_oss_selftest.py"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("fake_oss selftest:") && stdout.contains(" 0 failed"),
        "{stdout}"
    );
}
