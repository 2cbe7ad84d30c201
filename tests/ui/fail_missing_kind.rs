use aether::prelude::*;

#[derive(Debug, Serialize, Deserialize)]
pub enum Cmd { Ping }
#[derive(Debug, Serialize, Deserialize)]
pub enum Ev { Pinged }
#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
pub enum Err { #[error("no")] No }

#[derive(Debug, Default, Serialize, Deserialize, EventSourcedActor)]
#[actor(command = Cmd, event = Ev, reply = u64, error = Err)]
pub struct Missing { n: u64 }

fn main() {}