//! `export_raw` with qemu-img: internal snapshots, backing chains, refusals.

use super::fixture::run;
use super::scenario::build;
use crate::{DiffOptions, DiskImage, InspectError, export_raw, export_size, manifest};

#[tokio::test]
async fn exports_snapshots_and_the_current_state_of_an_overlay() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let s = |name: &str| p(name).to_str().unwrap().to_owned();
    build(false, &p("a.raw"));
    build(true, &p("b.raw"));
    // golden.qcow2 ← overlay.qcow2, with snapshot "before, with a comma" of state A,
    // then state B written over the overlay's current state.
    run(
        "qemu-img",
        &["convert", "-O", "qcow2", &s("a.raw"), &s("golden.qcow2")],
    );
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            &s("golden.qcow2"),
            &s("overlay.qcow2"),
        ],
    );
    run(
        "qemu-img",
        &[
            "snapshot",
            "-c",
            "before, with a comma",
            &s("overlay.qcow2"),
        ],
    );
    run(
        "qemu-img",
        &[
            "convert",
            "-n",
            "-O",
            "qcow2",
            &s("b.raw"),
            &s("overlay.qcow2"),
        ],
    );

    export_raw(
        &p("overlay.qcow2"),
        Some("before, with a comma"),
        &p("snap.raw"),
    )
    .await
    .unwrap();
    export_raw(&p("overlay.qcow2"), None, &p("now.raw"))
        .await
        .unwrap();
    let has_motd = |raw: &str| {
        let img = DiskImage::open(&p(raw)).unwrap();
        manifest(&img, &DiffOptions::default())
            .unwrap()
            .entries
            .contains_key("/etc/motd")
    };
    assert!(has_motd("snap.raw"), "the snapshot is state A");
    assert!(!has_motd("now.raw"), "the current state is B");
    // Sparse: far fewer blocks than the 16 MiB length.
    let meta = std::fs::metadata(p("now.raw")).unwrap();
    assert_eq!(meta.len(), 16 << 20);
    assert!(std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < meta.len());
    // What measure promises bounds what each export wrote (the free-space check).
    for (snap, raw) in [
        (None, "now.raw"),
        (Some("before, with a comma"), "snap.raw"),
    ] {
        let bound = export_size(&p("overlay.qcow2"), snap).await.unwrap();
        let written =
            std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(p(raw)).unwrap()) * 512;
        eprintln!("{raw}: {written} bytes written, measured bound {bound}");
        assert!(
            written <= bound && bound < 16 << 20,
            "{raw}: {written} > {bound}"
        );
    }
    assert!(matches!(
        export_size(&p("overlay.qcow2"), Some("nope")).await,
        Err(InspectError::QemuImg(_))
    ));

    let err = export_raw(&p("overlay.qcow2"), Some("nope"), &p("x.raw"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, InspectError::QemuImg(m) if m.contains("snapshot")),
        "{err}"
    );
    assert!(!p("x.raw").exists(), "a failed export leaves no file");
    let err = export_raw(&p("missing.qcow2"), None, &p("x.raw"))
        .await
        .unwrap_err();
    assert!(matches!(err, InspectError::QemuImg(_)));
    let err = export_raw(&p("overlay.qcow2"), Some("a\nb"), &p("x.raw"))
        .await
        .unwrap_err();
    assert!(matches!(err, InspectError::InvalidSnapshotName(_)));
}
