//! The libzmq the programs link (the system's, per .cargo/config.toml) can do CurveZMQ.

#[test]
fn libzmq_has_curve() {
    assert_eq!(
        zmq::has("curve"),
        Some(true),
        "this build's libzmq has no CURVE: is .cargo/config.toml's libzmq override in effect \
         (libzmq3-dev installed)?"
    );
    let (major, minor, _) = zmq::version();
    assert!(
        (major, minor) >= (4, 3),
        "libzmq {major}.{minor} is older than 4.3"
    );
    // a key pair can be made (libsodium's random source works)
    let pair = zmq::CurveKeyPair::new().expect("zmq_curve_keypair");
    assert_ne!(pair.public_key, pair.secret_key);
}
