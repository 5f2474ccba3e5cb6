//! A short seeded fuzz run of the wire layer, the hub and the native codec (the long runs:
//! `bench/fuzz_bench.sh`).

mod fuzz_gen;

#[test]
fn wire_layer_survives_hostile_frames() {
    assert_eq!(fuzz_gen::wire(5_000, 1), 5_000);
}

#[test]
fn hub_survives_hostile_peers_on_every_socket() {
    assert_eq!(fuzz_gen::hub(3_000, 2), 3_000);
}

#[test]
fn native_codec_survives_hostile_envelopes() {
    assert_eq!(fuzz_gen::native(5_000, 3), 5_000);
}
