//! After `101 Switching Protocols`: the client and backend connections
//! become one byte tunnel (WebSocket and other allowed upgrades) on the
//! same relay as tcp listeners.

use std::time::Duration;

use super::body::timed_write;
use crate::{
    config::Transfer,
    io::{
        pools::Pools,
        rbuf::RBuf,
        relay::{self, Counts, RelayEnd},
        stream::Stream,
    },
};

/// How a tunnel is driven.
pub struct TunnelOpts<'a> {
    pub pools: &'a Pools,
    pub transfer: Transfer,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
}

/// Send the (rewritten) 101 head and whatever the backend sent after it to
/// the client, what the client sent after its request to the backend, then
/// relay both ways until the tunnel ends. Returns the bytes relayed and how
/// it ended; `None` when a first write failed.
pub async fn run(
    client: &Stream,
    upstream: &Stream,
    head: &[u8],
    from_backend: &RBuf,
    from_client: &RBuf,
    o: &TunnelOpts<'_>,
) -> Option<(Counts, RelayEnd)> {
    if timed_write(client, head, from_backend.data(), o.write_timeout)
        .await
        .is_err()
    {
        return None;
    }
    if !from_client.is_empty()
        && timed_write(upstream, from_client.data(), &[], o.write_timeout)
            .await
            .is_err()
    {
        return None;
    }
    let counts = Counts::default();
    let end = relay::relay(
        client,
        upstream,
        o.pools,
        o.transfer,
        o.idle_timeout,
        &counts,
    )
    .await;
    Some((counts, end))
}
