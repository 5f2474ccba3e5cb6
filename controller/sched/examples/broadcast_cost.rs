//! How long one BroadcastView request costs the controller's loop, by number of targets:
//! the fan-out (`submit`) and the replies up to the coalesced answer. Issue 11 found the
//! fan-out quadratic (16 000 targets: 36 s). Run: `cargo run --release -p rpar-sched --example
//! broadcast_cost [max_targets]`; `bench/broadcast_bench.sh` runs it and prints the figures.

use rpar_core::wire::{Signer, WireMessage};
use rpar_core::MessageBuilder;
use rpar_sched::{BroadcastAction, BroadcastConfig, BroadcastScheduler};
use serde_json::json;
use std::time::Instant;

fn main() {
    let max: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(16_384);
    let key = b"bench-key";
    let client = b"\x00client".to_vec();
    let mut n = 1024u32;
    println!("targets  submit_ms  replies_ms  per_target_us");
    while n <= max {
        let t0 = Instant::now();
        let mut s = BroadcastScheduler::new(
            BroadcastConfig::default(),
            MessageBuilder::with_session("bench".into()),
            Signer::new(key),
        );
        let uuids: Vec<String> = (0..n).map(|i| format!("engine-{i:05}")).collect();
        for (i, u) in (0u32..).zip(&uuids) {
            s.add_engine(u.as_bytes(), i, t0);
        }
        let targets: Vec<_> = (0u32..).zip(&uuids).map(|(i, u)| json!([u, i])).collect();
        let client_b = MessageBuilder::with_session("client".into());
        let signer = Signer::new(key);
        let md = json!({"targets": targets, "is_broadcast": true, "is_coalescing": true});
        let req = client_b.build(
            &signer,
            vec![client.clone()],
            "apply_request",
            b"{}",
            &md,
            &json!({}),
            vec![b"f".to_vec(), b"args".to_vec()],
        );
        let start = Instant::now();
        let acts = s.submit(req, start);
        let submit = start.elapsed();
        let reqs: Vec<WireMessage> = acts
            .into_iter()
            .filter_map(|a| match a {
                BroadcastAction::ToEngine(f) => {
                    WireMessage::split(f, &rpar_core::wire::Limits::default()).ok()
                }
                BroadcastAction::ToClient(_) | BroadcastAction::ToEngineShared(..) => None,
            })
            .collect();
        let replies: Vec<WireMessage> = reqs
            .iter()
            .map(|r| {
                let e = MessageBuilder::with_session(String::from_utf8_lossy(&r.idents[0]).into());
                e.build(
                    &signer,
                    r.idents.clone(),
                    "apply_reply",
                    &r.header,
                    &json!({"status": "ok", "is_coalescing": true}),
                    &json!({"status": "ok"}),
                    vec![b"result".to_vec()],
                )
            })
            .collect();
        let start = Instant::now();
        let mut answered = 0;
        for r in replies {
            answered += s.on_engine_reply(r, start).len();
        }
        let back = start.elapsed();
        assert_eq!(answered, 1, "one coalesced reply");
        println!(
            "{n:7}  {:9.1}  {:10.1}  {:13.2}",
            submit.as_secs_f64() * 1e3,
            back.as_secs_f64() * 1e3,
            (submit + back).as_secs_f64() * 1e6 / f64::from(n)
        );
        n *= 2;
    }
}
