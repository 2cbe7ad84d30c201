use aether::prelude::*;

#[derive(Debug, Serialize, Deserialize)]
pub enum Cmd { Ping }
#[derive(Debug, Serialize, Deserialize)]
pub enum Ev { Pinged }
#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
pub enum Err { #[error("no")] No }

#[derive(Debug, Default, Serialize, Deserialize, EventSourcedActor)]
#[actor(kind = "light", command = Cmd, event = Ev, reply = bool, error = Err, snapshot_every = 50)]
pub enum Light {
    #[default]
    Off,
    On,
}

impl Handle<Cmd> for Light {
    async fn handle(&self, _cmd: Cmd, _ctx: &mut Ctx<Self>) -> Result<Effect<Self>, Err> {
        Ok(Effect::persist(Ev::Pinged).reply(matches!(self, Light::Off)))
    }
}

impl Behavior for Light {
    fn apply(&mut self, _event: &Ev) {
        *self = match self { Light::Off => Light::On, Light::On => Light::Off };
    }
}

fn main() {
    assert_eq!(<Light as aether::EventSourcedActor>::KIND, "light");
    assert_eq!(<Light as aether::EventSourcedActor>::SNAPSHOT_EVERY, Some(50));
}