use aether::prelude::*;

#[derive(Debug, Serialize, Deserialize)]
pub enum Cmd { Ping }
#[derive(Debug, Serialize, Deserialize)]
pub enum Ev { Pinged }
#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
pub enum Err { #[error("no")] No }

#[derive(Debug, Serialize, Deserialize)]
pub struct NotAnError;

#[derive(Debug, Default, Serialize, Deserialize, EventSourcedActor)]
#[actor(kind = "account", command = Cmd, event = Ev, reply = u64, error = NotAnError)]
pub struct BadError { n: u64 }

fn main() {}