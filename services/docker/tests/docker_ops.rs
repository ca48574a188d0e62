//! `DockerOps` against the real engine of this machine: a real server on
//! `127.0.0.1:0`, the generated client, and containers of the offline test
//! image (`tests/build-test-image.sh`). Every container a test creates is
//! removed when its harness drops, also when the test fails, and so is the
//! image once no running test holds it (`support::image`); the last tests
//! here check that.

mod support;

use std::time::Duration;

use mesh_proto::docker::v1 as pb;
use support::image::{ImagePool, TestImage};
use support::{TestDockerOps, assert_ok, docker_cli, inspect, item_code, item_reason, labels_of, status_reason};
use tokio_stream::StreamExt;
use tonic::Code;

fn seconds(seconds: i64) -> prost_types::Duration {
    prost_types::Duration { seconds, nanos: 0 }
}

async fn running_ids(mesh: &mut TestDockerOps) -> Vec<String> {
    let response = mesh
        .client
        .list_containers(pb::ListContainersRequest::default())
        .await
        .expect("list running containers")
        .into_inner();
    response.containers.into_iter().map(|c| c.container_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_containers_start_restart_and_stop_in_batches() {
    let mut mesh = TestDockerOps::start().await;
    let ids = mesh.create_managed(10, false).await;
    assert!(running_ids(&mut mesh).await.is_empty());

    let started = mesh
        .client
        .start_containers(pb::StartContainersRequest { container_ids: ids.clone(), max_concurrent: 0 })
        .await
        .expect("start")
        .into_inner();
    assert_eq!(started.max_concurrent, 5, "0 means the default concurrency");
    assert_eq!(started.results.len(), 10);
    for (result, id) in started.results.iter().zip(&ids) {
        assert_ok(result.result.as_ref());
        assert_eq!(&result.container_id, id);
        assert_eq!(result.result.as_ref().unwrap().item_id, *id, "results keep request order");
    }
    let mut running = running_ids(&mut mesh).await;
    running.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(running, expected);

    let pid_before = inspect(&ids[0], "{{.State.Pid}}");
    let restarted = mesh
        .client
        .restart_containers(pb::RestartContainersRequest {
            container_ids: ids.clone(),
            max_concurrent: 64,
            stop_timeout: Some(seconds(2)),
        })
        .await
        .expect("restart")
        .into_inner();
    assert_eq!(restarted.max_concurrent, 10, "requests above the cap are lowered to it");
    restarted.results.iter().for_each(|r| assert_ok(r.result.as_ref()));
    assert_ne!(inspect(&ids[0], "{{.State.Pid}}"), pid_before, "a restart runs a new process");
    assert_eq!(running_ids(&mut mesh).await.len(), 10);

    let stopped = mesh
        .client
        .stop_containers(pb::StopContainersRequest {
            container_ids: ids.clone(),
            max_concurrent: 3,
            stop_timeout: Some(seconds(2)),
        })
        .await
        .expect("stop")
        .into_inner();
    stopped.results.iter().for_each(|r| assert_ok(r.result.as_ref()));
    assert!(running_ids(&mut mesh).await.is_empty());
    for id in &ids {
        assert_eq!(inspect(id, "{{.State.Status}}"), "exited");
    }

    // Stopping stopped containers and starting by name both succeed.
    let name = inspect(&ids[0], "{{.Name}}");
    let again = mesh
        .client
        .start_containers(pb::StartContainersRequest { container_ids: vec![name.clone()], max_concurrent: 0 })
        .await
        .expect("start by name")
        .into_inner();
    assert_ok(again.results[0].result.as_ref());
    assert_eq!(again.results[0].container_id, ids[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_of_twenty_containers_are_read_in_parallel() {
    let mut mesh = TestDockerOps::start().await;
    let ids = mesh.create_managed(20, true).await;

    let response = mesh
        .client
        .get_stats(pb::GetStatsRequest { container_ids: ids.clone(), max_concurrent: 10, cpu_sample_window: None })
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(response.stats.len(), 20);
    for (stats, id) in response.stats.iter().zip(&ids) {
        assert_ok(stats.result.as_ref());
        assert_eq!(&stats.container_id, id);
        assert!(!stats.name.is_empty());
        let cpu = stats.cpu_percent.expect("cpu over the default window");
        assert!((0.0..=100.0 * f64::from(stats.online_cpus)).contains(&cpu), "{cpu}");
        assert!(stats.online_cpus >= 1);
        assert!(stats.memory_usage_bytes > 0);
        assert!(stats.memory_limit_bytes >= stats.memory_usage_bytes);
        assert!(stats.pids >= 1, "the sleeping shell runs");
        assert!(stats.read_time.is_some());
    }

    // A zero window takes one sample and leaves CPU unset.
    let single = mesh
        .client
        .get_stats(pb::GetStatsRequest {
            container_ids: ids[..2].to_vec(),
            max_concurrent: 0,
            cpu_sample_window: Some(seconds(0)),
        })
        .await
        .expect("single-sample stats")
        .into_inner();
    assert!(single.stats.iter().all(|s| s.cpu_percent.is_none() && s.memory_usage_bytes > 0));

    // Asked again, running containers answer from their live feeds: with CPU,
    // from samples the engine took after the first call's.
    let again = mesh
        .client
        .get_stats(pb::GetStatsRequest { container_ids: ids.clone(), max_concurrent: 10, cpu_sample_window: None })
        .await
        .expect("stats again")
        .into_inner();
    for (first, second) in response.stats.iter().zip(&again.stats) {
        assert_ok(second.result.as_ref());
        assert!(second.cpu_percent.is_some());
        assert!(second.read_time.as_ref().map(|t| t.seconds) >= first.read_time.as_ref().map(|t| t.seconds));
    }

    // A stopped container's feed ends; it is sampled one-shot, without CPU.
    let stopped = mesh
        .client
        .stop_containers(pb::StopContainersRequest {
            container_ids: ids[..1].to_vec(),
            max_concurrent: 1,
            stop_timeout: Some(seconds(2)),
        })
        .await
        .expect("stop")
        .into_inner();
    stopped.results.iter().for_each(|r| assert_ok(r.result.as_ref()));
    let after_stop = mesh
        .client
        .get_stats(pb::GetStatsRequest { container_ids: ids[..1].to_vec(), max_concurrent: 1, cpu_sample_window: None })
        .await
        .expect("stats of a stopped container")
        .into_inner();
    assert_ok(after_stop.stats[0].result.as_ref());
    assert_eq!(after_stop.stats[0].cpu_percent, None);
    assert_eq!(after_stop.stats[0].pids, 0, "nothing runs in a stopped container");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_are_created_labelled_and_removed() {
    let mut mesh = TestDockerOps::start().await;
    let name = format!("mesh-test-{}", mesh.namespace);
    let spec = pb::ContainerSpec {
        name: name.clone(),
        image: mesh.image().to_owned(),
        command: vec!["/bin/sh".into(), "-c".into(), "trap 'exit 0' TERM; sleep 600 & wait".into()],
        env: [("GREETING".to_owned(), "hello".to_owned())].into(),
        labels: [("app".to_owned(), "web".to_owned())].into(),
        ports: vec![pb::PortBinding { container_port: 8080, protocol: 0, host_port: 0, host_ip: "127.0.0.1".into() }],
        restart_policy: pb::RestartPolicy::OnFailure.into(),
        max_restart_count: 2,
        cpu_limit_millicores: 500,
        memory_limit_bytes: 64 * 1024 * 1024,
        start: true,
        network_mode: String::new(),
    };
    let bad_image = pb::ContainerSpec { image: "mesh-test-no-such-image:1".into(), ..Default::default() };
    let reserved = pb::ContainerSpec {
        image: mesh.image().into(),
        labels: [("mesh.managed".to_owned(), "false".to_owned())].into(),
        ..Default::default()
    };
    let response = mesh
        .client
        .create_containers(pb::CreateContainersRequest {
            specs: vec![spec.clone(), bad_image, reserved, spec],
            max_concurrent: 1,
        })
        .await
        .expect("create")
        .into_inner();
    let results = &response.results;
    assert_ok(results[0].result.as_ref());
    assert_eq!(results[0].result.as_ref().unwrap().item_id, name);
    assert_eq!(
        (item_code(results[1].result.as_ref()), item_reason(results[1].result.as_ref()).as_str()),
        (Code::NotFound, "IMAGE_NOT_FOUND")
    );
    assert_eq!(results[1].result.as_ref().unwrap().item_id, "#1");
    assert_eq!(item_code(results[2].result.as_ref()), Code::InvalidArgument);
    assert_eq!(item_reason(results[2].result.as_ref()), "INVALID_CONTAINER_SPEC");
    assert_eq!(item_code(results[3].result.as_ref()), Code::AlreadyExists, "the name is taken by the first spec");

    let id = results[0].container_id.clone();
    let labels = labels_of(&id);
    assert_eq!(labels["mesh.managed"], "true");
    assert_eq!(labels["app"], "web");
    assert_eq!(labels[support::NAMESPACE_KEY], mesh.namespace);
    assert_eq!(inspect(&id, "{{.State.Status}}"), "running");
    assert_eq!(inspect(&id, "{{.HostConfig.Memory}}"), (64 * 1024 * 1024).to_string());
    assert_eq!(inspect(&id, "{{.HostConfig.NanoCpus}}"), "500000000");
    assert_eq!(
        inspect(&id, "{{.HostConfig.RestartPolicy.Name}} {{.HostConfig.RestartPolicy.MaximumRetryCount}}"),
        "on-failure 2"
    );
    assert!(inspect(&id, "{{json .Config.Env}}").contains("GREETING=hello"));
    assert!(!docker_cli(&["port", &id, "8080/tcp"]).is_empty(), "the port is published");

    let refused = mesh
        .client
        .remove_containers(pb::RemoveContainersRequest { container_ids: vec![id.clone()], ..Default::default() })
        .await
        .expect("remove without force")
        .into_inner();
    assert_eq!(item_code(refused.results[0].result.as_ref()), Code::FailedPrecondition, "it is running");
    assert_eq!(item_reason(refused.results[0].result.as_ref()), "ENGINE_REFUSED");

    let removed = mesh
        .client
        .remove_containers(pb::RemoveContainersRequest {
            container_ids: vec![id.clone()],
            force: true,
            remove_volumes: true,
            max_concurrent: 0,
        })
        .await
        .expect("remove with force")
        .into_inner();
    assert_ok(removed.results[0].result.as_ref());
    assert!(docker_cli(&["ps", "-aq", "--filter", &format!("id={id}")]).is_empty());

    let again = mesh
        .client
        .remove_containers(pb::RemoveContainersRequest { container_ids: vec![id], force: true, ..Default::default() })
        .await
        .expect("remove again")
        .into_inner();
    assert_eq!(item_code(again.results[0].result.as_ref()), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_container_joins_the_network_its_spec_names() {
    let mut mesh = TestDockerOps::start().await;
    let missing_network = format!("mesh-test-no-such-network-{}", mesh.namespace);
    let spec = |network_mode: &str| pb::ContainerSpec {
        image: mesh.image().to_owned(),
        start: true,
        network_mode: network_mode.to_owned(),
        ..Default::default()
    };
    let specs = vec![spec(""), spec("none"), spec("host"), spec("bridge"), spec(&missing_network), spec("container:x")];
    let response = mesh
        .client
        .create_containers(pb::CreateContainersRequest { specs, max_concurrent: 0 })
        .await
        .expect("create")
        .into_inner();
    let results = &response.results;
    for result in &results[..4] {
        assert_ok(result.result.as_ref());
        assert_eq!(inspect(&result.container_id, "{{.State.Status}}"), "running");
    }
    let network_of = |index: usize| inspect(&results[index].container_id, "{{.HostConfig.NetworkMode}}");
    assert_eq!(network_of(0), "default", "an unset mode is the engine's default");
    assert_eq!(network_of(1), "none");
    assert_eq!(network_of(2), "host");
    assert_eq!(network_of(3), "bridge");
    let address_of = |index: usize| inspect(&results[index].container_id, "{{.NetworkSettings.IPAddress}}");
    assert!(!address_of(0).is_empty(), "the default bridge gives an address");
    assert_eq!(address_of(1), "", "`none` has a loopback interface only");

    // The engine creates a container on a missing network and refuses to start it.
    let on_missing_network = results[4].result.as_ref();
    assert_eq!(
        (item_code(on_missing_network), item_reason(on_missing_network).as_str()),
        (Code::NotFound, "NETWORK_NOT_FOUND")
    );
    assert!(on_missing_network.unwrap().status.as_ref().unwrap().message.contains(&missing_network));
    assert_eq!(inspect(&results[4].container_id, "{{.State.Status}}"), "created");

    let joining = results[5].result.as_ref();
    assert_eq!((item_code(joining), item_reason(joining).as_str()), (Code::InvalidArgument, "INVALID_CONTAINER_SPEC"));
    assert!(results[5].container_id.is_empty(), "nothing reached the engine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_malformed_ids_fail_alone() {
    let mut mesh = TestDockerOps::start().await;
    let ids = mesh.create_managed(1, false).await;
    let request = pb::StartContainersRequest {
        container_ids: vec![ids[0].clone(), "mesh-test-no-such-container".into(), "../images/json".into()],
        max_concurrent: 0,
    };
    let response = mesh.client.start_containers(request).await.expect("the batch succeeds").into_inner();
    assert_ok(response.results[0].result.as_ref());
    assert_eq!(item_code(response.results[1].result.as_ref()), Code::NotFound);
    assert_eq!(item_reason(response.results[1].result.as_ref()), "CONTAINER_NOT_FOUND");
    assert!(response.results[1].container_id.is_empty());
    assert_eq!(item_code(response.results[2].result.as_ref()), Code::InvalidArgument);
    assert_eq!(item_reason(response.results[2].result.as_ref()), "INVALID_CONTAINER_ID");
    assert_eq!(inspect(&ids[0], "{{.State.Status}}"), "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_outside_the_scope_are_refused_and_untouched() {
    let mut mesh = TestDockerOps::start().await;
    // In the namespace but without the management label, and managed but in
    // another namespace (the CLI adds this harness's namespace label first;
    // the second label of the same key wins).
    let unmanaged = mesh.create_with_cli(&[]);
    let foreign = mesh.create_with_cli(&["mesh.managed=true", &format!("{}=someone-else", support::NAMESPACE_KEY)]);
    // The foreign one must still be removed by this harness: relabelling it
    // moved it out of our namespace, so remember it explicitly.
    let _foreign_guard = support::RemoveOnDrop(foreign.clone());

    let targets = vec![unmanaged.clone(), foreign.clone()];
    let started = mesh
        .client
        .start_containers(pb::StartContainersRequest { container_ids: targets.clone(), max_concurrent: 0 })
        .await
        .expect("start")
        .into_inner();
    let removed = mesh
        .client
        .remove_containers(pb::RemoveContainersRequest {
            container_ids: targets.clone(),
            force: true,
            ..Default::default()
        })
        .await
        .expect("remove")
        .into_inner();
    let stats = mesh
        .client
        .get_stats(pb::GetStatsRequest { container_ids: targets.clone(), ..Default::default() })
        .await
        .expect("stats")
        .into_inner();
    for result in started.results.iter().chain(&removed.results) {
        assert_eq!(item_code(result.result.as_ref()), Code::PermissionDenied);
        assert_eq!(item_reason(result.result.as_ref()), "CONTAINER_NOT_MANAGED");
        assert!(result.container_id.is_empty(), "nothing about it is revealed");
    }
    for stat in &stats.stats {
        assert_eq!(item_code(stat.result.as_ref()), Code::PermissionDenied);
        assert_eq!(stat.memory_usage_bytes, 0);
    }
    for id in &targets {
        assert_eq!(inspect(id, "{{.State.Status}}"), "created", "untouched");
    }
    let listed = mesh
        .client
        .list_containers(pb::ListContainersRequest { include_stopped: true, ..Default::default() })
        .await
        .expect("list")
        .into_inner();
    assert!(listed.containers.is_empty(), "{:?}", listed.containers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_filters_by_label_and_pages() {
    let mut mesh = TestDockerOps::start().await;
    let image = mesh.image().to_owned();
    let spec = |tier: &str| pb::ContainerSpec {
        image: image.clone(),
        labels: [("tier".to_owned(), tier.to_owned())].into(),
        ..Default::default()
    };
    let created = mesh
        .client
        .create_containers(pb::CreateContainersRequest {
            specs: vec![spec("web"), spec("web"), spec("db")],
            max_concurrent: 0,
        })
        .await
        .expect("create")
        .into_inner();
    created.results.iter().for_each(|r| assert_ok(r.result.as_ref()));

    let web = mesh
        .client
        .list_containers(pb::ListContainersRequest {
            label_selectors: vec!["tier=web".into()],
            include_stopped: true,
            ..Default::default()
        })
        .await
        .expect("list web")
        .into_inner();
    assert_eq!(web.containers.len(), 2);
    assert!(web.containers.iter().all(|c| c.labels["tier"] == "web" && c.state == pb::ContainerState::Created as i32));

    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = mesh
            .client
            .list_containers(pb::ListContainersRequest {
                include_stopped: true,
                page_size: 2,
                page_token,
                ..Default::default()
            })
            .await
            .expect("list page")
            .into_inner();
        assert!(page.containers.len() <= 2);
        seen.extend(page.containers.into_iter().map(|c| c.container_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen.len(), 3);
    assert!(seen.windows(2).all(|pair| pair[0] < pair[1]), "pages are ordered by id");

    let bad = mesh
        .client
        .list_containers(pb::ListContainersRequest { label_selectors: vec!["=web".into()], ..Default::default() })
        .await
        .expect_err("an empty key is refused");
    assert_eq!((bad.code(), status_reason(&bad).as_str()), (Code::InvalidArgument, "INVALID_LABEL_SELECTOR"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_invalid_argument_with_a_reason() {
    let mut mesh = TestDockerOps::start().await;
    let empty = mesh
        .client
        .start_containers(pb::StartContainersRequest::default())
        .await
        .expect_err("an empty batch is refused");
    assert_eq!((empty.code(), status_reason(&empty).as_str()), (Code::InvalidArgument, "EMPTY_BATCH"));

    let too_long = mesh
        .client
        .stop_containers(pb::StopContainersRequest {
            container_ids: vec!["x".into()],
            stop_timeout: Some(seconds(100_000)),
            ..Default::default()
        })
        .await
        .expect_err("a stop timeout above the maximum is refused");
    assert_eq!((too_long.code(), status_reason(&too_long).as_str()), (Code::InvalidArgument, "INVALID_STOP_TIMEOUT"));

    let too_many = mesh
        .client
        .get_stats(pb::GetStatsRequest { container_ids: vec!["x".into(); 101], ..Default::default() })
        .await
        .expect_err("a batch above max_batch_size is refused");
    assert_eq!((too_many.code(), status_reason(&too_many).as_str()), (Code::InvalidArgument, "BATCH_TOO_LARGE"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_engine_is_unavailable_with_a_clear_message() {
    for docker_host in ["unix:///nonexistent/docker.sock", "tcp://127.0.0.1:1"] {
        let mut mesh = TestDockerOps::start_with(&[("DOCKER_HOST", docker_host)]).await;
        let error = mesh
            .client
            .start_containers(pb::StartContainersRequest { container_ids: vec!["web".into()], max_concurrent: 0 })
            .await
            .expect_err("no engine, no batch");
        assert_eq!(error.code(), Code::Unavailable, "{docker_host}: {error:?}");
        assert_eq!(status_reason(&error), "ENGINE_UNAVAILABLE");
        assert!(
            error.message().starts_with(&format!("docker engine at {docker_host} is unreachable")),
            "{}",
            error.message()
        );

        let health = mesh.client.health(pb::HealthRequest {}).await.expect("health always answers").into_inner();
        assert!(!health.engine_reachable);
        assert!(health.unreachable_reason.contains("unreachable"), "{}", health.unreachable_reason);
        assert!(health.engine_version.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_the_engine_and_the_managed_containers() {
    let mut mesh = TestDockerOps::start().await;
    mesh.create_managed(2, false).await;
    let health = mesh.client.health(pb::HealthRequest {}).await.expect("health").into_inner();
    assert!(health.engine_reachable, "{}", health.unreachable_reason);
    assert_eq!(health.engine_version, docker_cli(&["version", "--format", "{{.Server.Version}}"]));
    assert_eq!(health.api_version, docker_cli(&["version", "--format", "{{.Server.APIVersion}}"]));
    assert_eq!(health.managed_container_count, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_managed_containers_only_are_streamed() {
    let mut mesh = TestDockerOps::start().await;
    let mut events = mesh
        .client
        .watch_events(pb::WatchEventsRequest { label_selectors: vec![], actions: vec!["start".into()] })
        .await
        .expect("watch")
        .into_inner();
    let unmanaged = mesh.create_with_cli(&[]);
    docker_cli(&["start", &unmanaged]);
    let managed = mesh.create_managed(1, true).await.remove(0);

    let event = tokio::time::timeout(Duration::from_secs(30), events.next())
        .await
        .expect("an event within 30 s")
        .expect("the stream stays open")
        .expect("an event, not an error");
    assert_eq!(event.container_id, managed, "the unmanaged container's start, earlier, is not streamed");
    assert_eq!(event.action, "start");
    assert_eq!(event.image, mesh.image());
    assert_eq!(event.labels["mesh.managed"], "true");
    assert!(event.event_time.is_some());
}

// === cleanup: no image or container outlives the test that made it ===

/// Every image id `docker images -a` lists, in full.
fn listed_images() -> Vec<String> {
    docker_cli(&["images", "-aq", "--no-trunc"]).lines().map(str::to_owned).collect()
}

/// Every container id `docker ps -a` lists, in full.
fn listed_containers() -> Vec<String> {
    docker_cli(&["ps", "-aq", "--no-trunc"]).lines().map(str::to_owned).collect()
}

#[test]
fn a_test_image_and_its_containers_are_gone_once_its_guard_drops_even_on_panic() {
    let mut created: Option<(String, String)> = None;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let image = TestImage::build();
        let container = docker_cli(&["run", "--detach", image.tag()]);
        assert!(listed_images().contains(&image.id().to_owned()), "docker images lists the new image");
        created = Some((image.id().to_owned(), container));
        panic!("deliberate: a failing test, whose guard must still clean up");
    }));
    assert!(outcome.is_err(), "the closure panicked");
    let (image_id, container_id) = created.expect("the image and its container were created before the panic");
    assert!(!listed_images().contains(&image_id), "{image_id} is still listed by docker images -a");
    assert!(!listed_containers().contains(&container_id), "{container_id} is still listed by docker ps -a");
}

#[test]
fn a_shared_image_stays_while_any_test_holds_it_and_goes_with_the_last() {
    let pool = ImagePool::new();
    let first = pool.acquire();
    let second = pool.acquire();
    assert_eq!(first.id(), second.id(), "tests running together share one image");
    let image_id = first.id().to_owned();
    let container = docker_cli(&["create", second.tag()]);

    drop(first);
    assert!(listed_images().contains(&image_id), "the second holder still uses it");
    assert!(listed_containers().contains(&container));

    drop(second);
    assert!(!listed_images().contains(&image_id), "the last holder removed it");
    assert!(!listed_containers().contains(&container), "with the container made from it");

    let next = pool.acquire();
    assert_ne!(next.id(), image_id, "a later test gets a new image");
    let next_id = next.id().to_owned();
    drop(next);
    assert!(!listed_images().contains(&next_id));
}

#[test]
fn leftovers_of_a_run_that_died_are_removed_and_live_runs_are_not() {
    // A crashed run: its guard never dropped (forgotten), its owner is no
    // process (pid 0 has no /proc entry).
    let dead_owner = "0-0";
    assert!(!support::image::is_alive(dead_owner));
    assert!(support::image::is_alive(&support::image::this_process_owner()));
    let leftover = std::mem::ManuallyDrop::new(TestImage::build_owned_by(dead_owner));
    let leftover_container = docker_cli(&["create", leftover.tag()]);
    let ours = TestImage::build();

    support::image::remove_leftovers();
    assert!(!listed_images().contains(&leftover.id().to_owned()), "the dead run's image is removed");
    assert!(!listed_containers().contains(&leftover_container), "with its container");
    assert!(listed_images().contains(&ours.id().to_owned()), "an image of a live run stays");
}
