//! Deadlock test support: links whose turns wait on each other, and a cycle runner.

use std::time::{Duration, Instant};

use aether::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LinkCmd {
    /// Sleep `wait_ms` (so the turns of a cycle overlap), then ask `next` to `Ping`.
    Hold { next: ActorRef<Link>, wait_ms: u64 },
    /// Store one event.
    Ping,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LinkEvent {
    Pinged,
}

#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum LinkError {
    #[error("downstream: {0}")]
    Downstream(String),
}

/// Replies: "pong" to a ping; "ok" or "deadlock" to a hold.
#[derive(Debug, Default, Serialize, Deserialize, EventSourcedActor)]
#[actor(kind = "link", command = LinkCmd, event = LinkEvent, reply = String, error = LinkError)]
pub struct Link {
    pings: u64,
}

impl Handle<LinkCmd> for Link {
    async fn handle(&self, cmd: LinkCmd, ctx: &mut Ctx<Self>) -> Result<Effect<Self>, LinkError> {
        match cmd {
            LinkCmd::Ping => Ok(Effect::persist(LinkEvent::Pinged).reply("pong".into())),
            LinkCmd::Hold { next, wait_ms } => {
                tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                match ctx.ask(&next, LinkCmd::Ping).await {
                    Ok(_) => Ok(Effect::reply("ok".into())),
                    Err(AskError::Failed(CallError::Deadlock { .. })) => {
                        Ok(Effect::reply("deadlock".into()))
                    }
                    Err(e) => Err(LinkError::Downstream(e.to_string())),
                }
            }
        }
    }
}

impl Behavior for Link {
    fn apply(&mut self, event: &LinkEvent) {
        match event {
            LinkEvent::Pinged => self.pings += 1,
        }
    }
}

/// Forms a cycle of `links` (each holds, then asks the next) and returns, per link, its answer
/// and how long after the cycle formed it came.
async fn run_cycle(links: &[ActorRef<Link>], wait_ms: u64) -> Vec<(String, Duration)> {
    let start = Instant::now();
    let formed = start + Duration::from_millis(wait_ms);
    let mut tasks = Vec::new();
    for (i, link) in links.iter().enumerate() {
        let link = link.clone();
        let next = links[(i + 1) % links.len()].clone();
        tasks.push(tokio::spawn(async move {
            let answer = link
                .ask_with(
                    LinkCmd::Hold { next, wait_ms },
                    AskOptions::default().timeout(Duration::from_secs(5)),
                )
                .await
                .expect("a hold answers");
            (answer, Instant::now().saturating_duration_since(formed))
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

pub async fn assert_cycle_refused(links: &[ActorRef<Link>], pings_of: impl AsyncFn() -> u64) {
    let before = pings_of().await;
    let answers = run_cycle(links, 300).await;
    let refused = answers.iter().filter(|(a, _)| a == "deadlock").count();
    let slowest = answers.iter().map(|(_, d)| *d).max().unwrap_or_default();
    println!(
        "cycle of {}: {refused} refused, all answered {slowest:?} after it formed",
        links.len()
    );
    assert!(refused >= 1, "a cycle must be refused: {answers:?}");
    assert!(
        slowest < Duration::from_millis(250),
        "refused within 250 ms of forming, took {slowest:?}"
    );
    // A refused ask never ran: exactly the holds that got "ok" produced a ping.
    let ok = answers.iter().filter(|(a, _)| a == "ok").count() as u64;
    assert_eq!(
        pings_of().await - before,
        ok,
        "nothing applied for refused asks"
    );
}
