mod common;

use std::time::Duration;

use common::*;
use tribe::{PluginKind, TaskState};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_share_tribe_plugin_and_task() {
    let nodes = start_cluster("smoke", 5, |_| {}).await;
    wait_converged_members(&nodes, 5).await;
    let writer = &nodes[3];
    writer.create_tribe("core").await.unwrap();
    writer
        .load_plugin("core", "cpu", "1", PluginKind::Collector, None)
        .await
        .unwrap();
    writer
        .add_task("core", "t1", r#"{"interval":"1s"}"#, TaskState::Running)
        .await
        .unwrap();
    wait_for(
        "all see tribe core with catalog",
        Duration::from_secs(10),
        || {
            nodes.iter().all(|n| {
                n.tribe("core")
                    .is_some_and(|t| t.plugins.len() == 1 && t.tasks.len() == 1)
            })
        },
    )
    .await;
    wait_same_digest(&nodes).await;
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}
