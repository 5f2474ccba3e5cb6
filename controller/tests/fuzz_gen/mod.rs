//! Seeded fuzz generators for the controller's peer-facing layers (cargo-fuzz needs a nightly
//! toolchain; these are deterministic instead, `StdRng` from a seed): the wire layer (split,
//! verify, JSON parts), the hub (every socket, signed and unsigned, edge values in every id
//! field) and the native-transport codec (random and mutated signed envelopes). Each target
//! returns how many inputs it ran; the only assertion is that nothing panics and the hub still
//! answers. Shared by `tests/fuzz.rs` (a short run in CI) and `examples/fuzz.rs` (>= 1 M inputs
//! per target, `bench/fuzz_bench.sh`).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rpar_controller::hub::{Db, Hub, HubConfig, Sock};
use rpar_core::connection::EngineInfo;
use rpar_core::native::{Body, Decoder, Encoder, EngineSpec, RouteHeader};
use rpar_core::wire::{Frames, Limits, Signer, WireMessage, DELIM};
use rpar_core::MessageBuilder;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const KEY: &[u8] = b"fuzz-key";

const PIECES: [&[u8]; 12] = [
    b"{}",
    b"[]",
    b"null",
    b"{\"msg_id\": 5, \"msg_type\": []}",
    b"{\"msg_type\": \"apply_request\", \"msg_id\": \"x\", \"date\": \"garbage\"}",
    b"{\"targets\": \"nope\", \"after\": {\"dependencies\": 3}, \"retries\": -1}",
    b"{\"msg_ids\": [1, null], \"targets\": [[\"a\", \"b\"]], \"query\": {\"x\": {\"$bogus\": 1}}}",
    b"\xff\xfe\x00",
    b"",
    b"e0",
    b"<IDS|MSG>",
    b"{\"id\": 18446744073709551615, \"uuid\": \"e0\"}",
];

const TYPES: [&str; 14] = [
    "apply_request",
    "execute_request",
    "db_request",
    "result_request",
    "queue_request",
    "purge_request",
    "resubmit_request",
    "registration_request",
    "unregistration_request",
    "connection_request",
    "history_request",
    "apply_reply",
    "stream",
    "shutdown_reply",
];

fn edge(rng: &mut StdRng) -> Value {
    match rng.gen_range(0..14) {
        0 => json!(u32::MAX),
        1 => json!(u64::from(u32::MAX) + 1),
        2 => json!(1u64 << 63),
        3 => json!(u64::MAX),
        4 => json!(-1),
        5 => json!(i64::MIN),
        6 => json!(0.5),
        7 => json!(-1e300),
        8 => json!("0"),
        9 => json!("e0"),
        10 => Value::Null,
        11 => json!([]),
        12 => json!({"dependencies": ["x"], "all": "yes"}),
        _ => json!(rng.gen_range(0..4u32)),
    }
}

fn random_bytes(rng: &mut StdRng) -> Vec<u8> {
    let n = rng.gen_range(0..48);
    (0..n).map(|_| rng.gen()).collect()
}

fn random_frames(rng: &mut StdRng) -> Frames {
    let n = rng.gen_range(0..9);
    let mut f: Frames = (0..n)
        .map(|_| {
            if rng.gen_bool(0.7) {
                PIECES[rng.gen_range(0..PIECES.len())].to_vec()
            } else {
                random_bytes(rng)
            }
        })
        .collect();
    if rng.gen_bool(0.3) {
        let at = rng.gen_range(0..=f.len());
        f.insert(at, DELIM.to_vec());
    }
    f
}

/// A correctly signed message of a random type with hostile JSON (edge values in id fields).
fn signed(rng: &mut StdRng, b: &MessageBuilder, s: &Signer) -> WireMessage {
    let mut e = || edge(rng);
    let content = json!({
        "id": e(), "uuid": "e0", "targets": [e(), e()], "engine_ids": [e()], "msg_ids": [e()],
        "verbose": e(), "status_only": e(), "query": {"msg_id": e()}, "keys": e(),
    });
    let md = json!({
        "targets": [["e0", e()], e()], "after": [e()], "follow": e(), "retries": e(),
        "timeout": e(), "is_coalescing": e(), "is_broadcast": true, "status": "ok",
    });
    let t = TYPES[rng.gen_range(0..TYPES.len())];
    let idents = match rng.gen_range(0..3) {
        0 => vec![],
        1 => vec![b"e0".to_vec()],
        _ => vec![b"e0".to_vec(), b"cid".to_vec()],
    };
    let parent = if rng.gen_bool(0.5) {
        PIECES[rng.gen_range(0..PIECES.len())].to_vec()
    } else {
        b.header_bytes("apply_request")
    };
    b.build(
        s,
        idents,
        t,
        &parent,
        &md,
        &content,
        vec![random_bytes(rng)],
    )
}

/// The wire layer: split, verify, read the JSON parts.
pub fn wire(n: u64, seed: u64) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let (b, mut s) = (
        MessageBuilder::with_session("fuzz".into()),
        Signer::new(KEY),
    );
    let limits = Limits::default();
    for _ in 0..n {
        let frames = if rng.gen_bool(0.5) {
            let mut f = signed(&mut rng, &b, &s).into_frames();
            if rng.gen_bool(0.5) && !f.is_empty() {
                // flip a byte somewhere
                let i = rng.gen_range(0..f.len());
                if !f[i].is_empty() {
                    let j = rng.gen_range(0..f[i].len());
                    f[i][j] ^= 1 << rng.gen_range(0..8);
                }
            }
            f
        } else {
            random_frames(&mut rng)
        };
        if let Ok(m) = WireMessage::split(frames, &limits) {
            let _ = s.verify(&m);
            let _ = m.content_value();
            let _ = m.metadata_value();
            let _ = m.parent_value();
            let _ = rpar_core::Header::parse(&m.header);
        }
    }
    n
}

fn hub_now(now: Instant) -> Hub {
    let cfg = HubConfig {
        hb_period: Duration::from_millis(100),
        max_heartbeat_misses: 2,
        registration_timeout: Duration::from_secs(5),
        engine_info: EngineInfo {
            ssh: String::new(),
            interface: "tcp://127.0.0.1".into(),
            registration: 1,
            control: 2,
            mux: 3,
            task: 4,
            iopub: 5,
            hb_ping: 6,
            hb_pong: 7,
            broadcast: vec![8],
            key: String::from_utf8_lossy(KEY).into_owned(),
            curve_serverkey: None,
            location: "fuzz".into(),
            pack: "json".into(),
            unpack: "json".into(),
            signature_scheme: "hmac-sha256".into(),
            rpar_native: None,
        },
        scheme: "leastload".into(),
        hwm: 1,
        engine_death_grace: Duration::ZERO,
    };
    let db: Db = Box::new(rpar_taskdb::MemoryDb::new(Default::default()));
    Hub::new(cfg, KEY, "fuzz-hub".into(), db, now)
}

const SOCKS: [Sock; 14] = [
    Sock::Registration,
    Sock::Notification,
    Sock::HbPong,
    Sock::MuxClient,
    Sock::MuxEngine,
    Sock::ControlClient,
    Sock::ControlEngine,
    Sock::TaskClient,
    Sock::TaskEngine,
    Sock::BcastClient,
    Sock::BcastEngine,
    Sock::IopubEngine,
    Sock::Native,
    Sock::Registration,
];

/// The hub: random and signed-hostile messages on every socket, clock ticks in between.
pub fn hub(n: u64, seed: u64) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let t0 = Instant::now();
    let mut h = hub_now(t0);
    let (b, s) = (MessageBuilder::with_session("e0".into()), Signer::new(KEY));
    // one real engine to aim at
    let reg = b.build(
        &s,
        vec![b"e0".to_vec()],
        "registration_request",
        b"{}",
        &json!({}),
        &json!({"uuid": "e0"}),
        vec![],
    );
    h.on_message(Sock::Registration, reg.into_frames(), t0);
    h.on_message(Sock::HbPong, vec![b"e0".to_vec(), h.heart_token()], t0);
    let mut enc = Encoder::new(KEY, 7);
    for i in 0..n {
        let now = t0 + Duration::from_micros(i * 50);
        let sock = SOCKS[rng.gen_range(0..SOCKS.len())];
        let frames = match (sock, rng.gen_range(0..3)) {
            (Sock::Native, 0) => native_frames(&mut rng, &mut enc),
            (_, 0) => random_frames(&mut rng),
            (Sock::HbPong, _) => vec![b"e0".to_vec(), h.heart_token()],
            _ => signed(&mut rng, &b, &s).into_frames(),
        };
        let _ = h.on_message(sock, frames, now);
        if i % 64 == 0 {
            let _ = h.tick(now);
        }
    }
    // still serving
    let q = b.build(
        &s,
        vec![b"q".to_vec()],
        "connection_request",
        b"{}",
        &json!({}),
        &json!({}),
        vec![],
    );
    let out = h.on_message(Sock::Registration, q.into_frames(), t0);
    assert!(!out.is_empty(), "the hub no longer answers");
    n
}

fn native_body(rng: &mut StdRng) -> Body {
    let mut e = || rng.gen::<u32>() >> rng.gen_range(0..32);
    match e() % 9 {
        0 => Body::Register {
            engines: (0..e() % 4)
                .map(|i| EngineSpec {
                    rank: i,
                    uuid: format!("n{i}"),
                    requested: u32::MAX - i,
                })
                .collect(),
        },
        1 => Body::Ping { token: 1 },
        2 => Body::Pong { token: u64::MAX },
        3 => Body::Hello,
        4 => Body::Reregister,
        5 => Body::Route(RouteHeader {
            engine: e(),
            channel: rpar_core::native::Channel::ALL[(e() % 5) as usize],
        }),
        6 => Body::Shutdown,
        7 => Body::Unregister(rpar_core::native::Departure::RankLost {
            rank: e(),
            reason: "fuzz".into(),
        }),
        _ => Body::Registered(Err("x".into())),
    }
}

fn native_frames(rng: &mut StdRng, enc: &mut Encoder) -> Frames {
    let body = native_body(rng);
    let mut f = enc.encode(body, random_frames(rng));
    match rng.gen_range(0..4) {
        0 => {}
        1 => {
            // flip a bit in the envelope or the signature
            let i = rng.gen_range(0..2.min(f.len()));
            if !f[i].is_empty() {
                let j = rng.gen_range(0..f[i].len());
                f[i][j] ^= 1 << rng.gen_range(0..8);
            }
        }
        2 => f.truncate(rng.gen_range(0..f.len())),
        _ => {
            if f.len() > 1 {
                f[1] = random_bytes(rng);
            }
        }
    }
    if rng.gen_bool(0.5) {
        f.insert(0, b"job-ident".to_vec());
    }
    f
}

/// The native-transport codec: decode random, truncated and mutated signed envelopes.
pub fn native(n: u64, seed: u64) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut enc = Encoder::new(KEY, 3);
    let mut dec = Decoder::new(KEY);
    for _ in 0..n {
        let f = if rng.gen_bool(0.8) {
            let mut f = native_frames(&mut rng, &mut enc);
            if f.first().map(Vec::as_slice) == Some(b"job-ident") {
                f.remove(0);
            }
            f
        } else {
            random_frames(&mut rng)
        };
        let _ = dec.decode_owned(f);
    }
    n
}
