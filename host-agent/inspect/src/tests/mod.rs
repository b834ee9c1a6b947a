//! Tests on real ext4 images built with `mkfs.ext4 -d` (e2fsprogs; run as root so
//! ownership is kept), qcow2 files made with qemu-img, and partition tables by parted.

mod diff_tests;
mod duplicate_tests;
mod export_tests;
mod fixture;
mod golden;
mod image_tests;
mod parse_tests;
mod read_tests;
mod scenario;
