//! Cancel peers from the EndpointSlices of pgcell's own Service.

use tokio::net::TcpStream;
use tokio_postgres::NoTls;

use crate::apiserver::{slice, ApiServer, Kind, Ready};
use crate::*;

/// Two replicas with one config (as a Deployment's, but for the data
/// port: on 127.0.0.1 they differ only in port, and a replica knows
/// itself among the endpoints by its configured address), with the
/// instance id `"auto"` would derive for their address: both get the same
/// id, the collision the forwarding must survive. Each finds the other in
/// the EndpointSlices, and a cancel sent to the replica not serving the
/// client reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_from_endpointslices_forward_cancels() {
    let _serial = serial().await;
    let a = cluster("kube-peers");
    let api = ApiServer::start().await;
    let id = pgcell::instance_id_of("127.0.0.1".parse().unwrap());
    let text = config_text(
        &api.url(),
        "peer_service = \"pgcell\"",
        &format!(
            "[cancel]\ninstance_id = {id}\n\n[[tenants]]\nid = \"acme\"\nbackends = [\"{}\"]\n",
            a.addr()
        ),
    );
    let port = || pgcell::free_port().unwrap();
    let listen = |port: u16| text.replacen("127.0.0.1:0", &format!("127.0.0.1:{port}"), 1);
    let one = Proxy::start(&listen(port())).await;
    let two = Proxy::start(&listen(port())).await;
    // One slice per replica: on 127.0.0.1 they differ only in port.
    for (name, proxy) in [("pgcell-1", &one), ("pgcell-2", &two)] {
        api.apply(
            Kind::Slice,
            NS,
            slice(
                name,
                "pgcell",
                "postgres",
                proxy.addr.port(),
                &[("127.0.0.1", Ready::Yes)],
            ),
        );
    }
    // Not ready: not a peer.
    api.apply(
        Kind::Slice,
        NS,
        slice(
            "pgcell-3",
            "pgcell",
            "postgres",
            1,
            &[("127.0.0.1", Ready::No)],
        ),
    );
    one.wait_metric("pgcell_discovery_peers", 1.0).await;
    two.wait_metric("pgcell_discovery_peers", 1.0).await;

    // A client of replica one, its cancel sent to replica two.
    let (client, conn) = one.pg_config("app.acme").connect(NoTls).await.unwrap();
    tokio::spawn(conn);
    let token = client.cancel_token();
    let mut sleeper = tokio::spawn(async move { client.simple_query("select pg_sleep(30)").await });
    let err = cancel_until_done(&mut sleeper, || async {
        let tcp = TcpStream::connect(two.addr).await.unwrap();
        token.cancel_query_raw(tcp, NoTls).await.unwrap();
    })
    .await
    .expect_err("the query was cancelled");
    assert_eq!(code_of(&err), "57014");

    // The other replica leaves: no peers.
    api.delete(Kind::Slice, NS, "pgcell-2");
    one.wait_metric("pgcell_discovery_peers", 0.0).await;
    one.stop().await;
    two.stop().await;
}
