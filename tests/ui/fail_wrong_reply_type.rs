use aether::prelude::*;

#[derive(Debug, Serialize, Deserialize)]
pub struct Add(pub u64);
#[derive(Debug, Serialize, Deserialize)]
pub struct Other;
#[derive(Debug, Serialize, Deserialize)]
pub enum Ev { Added(u64) }
#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
pub enum Err { #[error("no")] No }

#[derive(Debug, Default, Serialize, Deserialize, EventSourcedActor)]
#[actor(kind = "tally", event = Ev, error = Err, commands(Add -> u64))]
pub struct Tally { total: u64 }

impl Handle<Add> for Tally {
    async fn handle(&self, Add(n): Add, _: &mut Ctx<Self>) -> Result<Effect<Self, u64>, Err> {
        Ok(Effect::persist(Ev::Added(n)).reply_with(|t: &Self| t.total))
    }
}

impl Behavior for Tally {
    fn apply(&mut self, Ev::Added(n): &Ev) {
        self.total += n;
    }
}

async fn wrong(tally: ActorRef<Tally>) {
    // `Add` answers with a u64, not a String.
    let _: String = tally.ask(Add(1)).await.unwrap();
    // `Other` is not a command of `Tally`.
    let _ = tally.ask(Other).await;
}

fn main() {
    let _ = wrong;
}
