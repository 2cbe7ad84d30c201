use aether::prelude::*;

#[derive(Debug, Serialize, Deserialize)]
pub struct Add(pub u64);
#[derive(Debug, Serialize, Deserialize)]
pub struct Name;
#[derive(Debug, Serialize, Deserialize)]
pub enum Ev { Added(u64) }
#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
pub enum Err { #[error("no")] No }

#[derive(Debug, Default, Serialize, Deserialize, EventSourcedActor)]
#[actor(kind = "tally", event = Ev, error = Err, commands(Add -> u64, Name -> String))]
pub struct Tally { total: u64 }

impl Handle<Add> for Tally {
    async fn handle(&self, Add(n): Add, _: &mut Ctx<Self>) -> Result<Effect<Self, u64>, Err> {
        Ok(Effect::persist(Ev::Added(n)).reply_with(|t: &Self| t.total))
    }
}

impl Handle<Name> for Tally {
    async fn handle(&self, _: Name, _: &mut Ctx<Self>) -> Result<Effect<Self, String>, Err> {
        Ok(Effect::reply("tally".to_owned()))
    }
}

impl Behavior for Tally {
    fn apply(&mut self, Ev::Added(n): &Ev) {
        self.total += n;
    }
}

async fn typed(tally: ActorRef<Tally>) -> Result<(), AskError<Err>> {
    let total: u64 = tally.ask(Add(1)).await?;
    let name: String = tally.ask(Name).await?;
    let _ = (total, name);
    Ok(())
}

fn main() {
    let _ = typed;
}
