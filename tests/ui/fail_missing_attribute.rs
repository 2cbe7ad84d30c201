use aether::prelude::*;

#[derive(Debug, Serialize, Deserialize)]
pub enum Cmd { Ping }
#[derive(Debug, Serialize, Deserialize)]
pub enum Ev { Pinged }
#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
pub enum Err { #[error("no")] No }

#[derive(Debug, Default, Serialize, Deserialize, EventSourcedActor)]
pub struct Bare { n: u64 }

fn main() {}