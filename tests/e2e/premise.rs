//! Checks of the ground the other tests stand on, runnable without the farm's
//! binaries: the fixtures build, and merely putting a wrapper between cargo
//! and rustc changes no byte of the output. If this fails, a difference found
//! by a farm test says nothing about the farm.

use std::os::unix::fs::PermissionsExt;

use distcc_rs_e2e::{
    cargo_build, cargo_build_with_env, compare_artifacts, copy_fixture, exclusive,
    snapshot_artifacts,
};

use crate::{local_reference, run_binary};

#[test]
fn passthrough_wrapper_build_is_byte_identical() {
    let app = wrapped_build_matches_local_build("workspace", Some("app")).expect("the app ran");
    assert!(
        app.contains("native add: 42") && app.contains("prime sum: 328"),
        "unexpected app output:\n{app}"
    );
}

#[test]
fn passthrough_wrapper_build_of_crates_io_deps_is_byte_identical() {
    wrapped_build_matches_local_build("realdeps", None);
}

/// Builds a fixture locally and then through a wrapper that only executes
/// rustc, and asserts that the libraries (and what `binary` prints, which is
/// returned) are the same.
fn wrapped_build_matches_local_build(fixture_name: &str, binary: Option<&str>) -> Option<String> {
    let _serial = exclusive();
    let fixture = copy_fixture(fixture_name);
    let local = local_reference(&fixture, binary);

    let wrapper = fixture.scratch().join("passthrough-wrapper");
    std::fs::write(&wrapper, "#!/bin/sh\nexec \"$@\"\n").expect("write the wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
        .expect("make the wrapper executable");
    let env = [(
        "RUSTC_WRAPPER".to_owned(),
        wrapper.to_string_lossy().into_owned(),
    )];
    cargo_build_with_env(fixture.root(), &env, &[]).assert_success("the wrapped build");

    compare_artifacts(&local.artifacts, &snapshot_artifacts(&fixture.target_dir()));
    let wrapped_output = binary.map(|name| run_binary(&fixture, name));
    assert_eq!(wrapped_output, local.binary_output);
    wrapped_output
}

#[test]
fn broken_fixture_fails_with_a_type_error() {
    let _serial = exclusive();
    let fixture = copy_fixture("broken");
    let output = cargo_build(fixture.root(), None, &[]);
    assert_eq!(output.status.code(), Some(101), "{}", output.stderr);
    let diagnostics = output.diagnostics();
    assert!(
        diagnostics
            .iter()
            .any(|l| l.starts_with("warning: unused import")),
        "{diagnostics:#?}"
    );
    assert_eq!(
        diagnostics
            .iter()
            .filter(|l| l.starts_with("error[E0308]"))
            .count(),
        1,
        "{diagnostics:#?}"
    );
}
