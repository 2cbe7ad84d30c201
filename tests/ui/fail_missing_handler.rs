use aether::prelude::*;

#[derive(Debug, Serialize, Deserialize)]
pub struct Add(pub u64);
#[derive(Debug, Serialize, Deserialize)]
pub struct Get;
#[derive(Debug, Serialize, Deserialize)]
pub enum Ev { Added(u64) }
#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
pub enum Err { #[error("no")] No }

// `Get` is listed but has no `impl Handle<Get> for Tally`.
#[derive(Debug, Default, Serialize, Deserialize, EventSourcedActor)]
#[actor(kind = "tally", event = Ev, error = Err, commands(Add -> u64, Get -> u64))]
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

fn main() {}
