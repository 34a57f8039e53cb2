//! Rescaling the running generation in place: more or fewer replicas behind a balancer, and no
//! other container restarted.
//!
//! `up` of the build that runs, whose plan differs from the running one only in such counts
//! ([`crate::model::rescale`]), changes the running generation instead of rolling out a new one:
//!
//! 1. the added replicas start as containers of the same generation, named as its others are
//!    (`<app>-<node>-<replica>-g<N>`), on the app's network, from the same image, with the same
//!    environment (the generation's secret and passed variables included), and must answer
//!    `/healthz`; if one never does, they are removed and nothing else changed;
//! 2. every container of the generation is handed the new address book
//!    ([`crate::plane::live_book`]) at its address on the app network (which `inspect` gives and
//!    a local Linux engine routes from the host, as the health probes already need): from its next
//!    request on, a balancer chooses among the replicas the book lists;
//! 3. the record and the history take the new plan and book, and only then do the removed
//!    replicas stop, as a retiring generation's do: `docker stop` with the drain bound, so each
//!    finishes what it serves, then removal.
//!
//! A rescale is not a release of its own: the history's current release takes the new plan, and
//! the release to roll back to stays the build (or topology) the last rollout replaced. Going
//! back to the old count is another `up`, itself a rescale.
//!
//! Anything else that differs refuses the rescale, with the reason printed, and `up` rolls out a
//! new generation as before: another build, other published ports, a generation left by a
//! rollout, no history of the running release, or a container this deploy would create otherwise
//! than the generation's (its store, mounts, log filter or tracing settings). Variables passed
//! with `MP_PASS_ENV` (which may be how `main` chose the count) are the generation's in every
//! one of its containers, the added ones too, as on the local runner where a rescale's new
//! processes inherit their supervisor's environment.
//!
//! A container the engine restarts later starts with the book it was created with: an added
//! replica it does not know goes unused by it, and a removed one it still lists fails to connect
//! before anything is sent, so its balancer retries elsewhere and drops it from rotation.

use std::collections::BTreeMap;
use std::time::Instant;

use bollard::models::ContainerSummary;
use bollard::Docker;

use super::containers::{self, Replica};
use super::error::DockerError;
use super::history::{History, Release};
use super::labels::{self, CONTAINER_PORT};
use super::progress::Progress;
use super::{is_edge, same_ports, Generation, Running};
use crate::deployments::Deployment;
use crate::model::rescale::{self, rescale_of, Rescale};
use crate::plane::{live_book, AddressBook};
use crate::runner::{Deploy, DeployError};

type Result<T, E = DockerError> = std::result::Result<T, E>;

/// The variable a node's address book travels in: it differs between containers created
/// before and after a rescale, and is handed out live instead.
const BOOK_VAR: &str = "MP_ADDRESS_BOOK";

/// If `release` is the running build and its plan only changes replica counts behind balancers,
/// rescales the running generation in place and prints what it did: `Some` once done. `None`
/// when a new generation must be rolled out instead (said why when it was a rescale otherwise).
pub(super) async fn in_place(
    docker: &Docker,
    deploy: &Deploy,
    release: &Release,
    running: &Running,
    progress: &Progress,
) -> Result<Option<()>> {
    let Some(record) = &running.record else { return Ok(None) };
    if record.version.as_deref() != Some(release.version.as_str()) {
        return Ok(None);
    }
    let Some(changes) = rescale_of(&release.plan, &record.plan).filter(|c| !c.is_empty()) else {
        return Ok(None);
    };
    let history = History::load(&deploy.app, Some(record))?;
    let published: Vec<_> = deploy
        .exposed_addresses(&release.plan)?
        .into_iter()
        .map(|(n, r, a)| (n.name.clone(), r, a))
        .collect();
    let refuse = |why: String| {
        println!(
            "app '{}' is running build {}: cannot rescale in place ({why}): rolling out a new generation instead",
            deploy.app, release.version
        );
        Ok(None)
    };
    let (generation, current) = match scope(
        record,
        &history,
        &running.containers,
        release,
        same_ports(record, &release.plan, &published),
    ) {
        Ok(scope) => scope,
        Err(why) => return refuse(why),
    };
    let network = labels::network_name(&deploy.app);
    let kept = labels::container_name(&deploy.app, &changes[0].node, 0, generation);
    let created = match created_as(docker, &kept).await? {
        Some(created) => created,
        None => return refuse(format!("its container {kept} is not running")),
    };
    let secret = created.var(crate::plane::launch_env::SECRET_VAR).unwrap_or_default().to_string();
    let this = Generation {
        image: &current.image,
        version: &current.version,
        env: &current.env,
        replicas: &[],
        edges: &[],
    };
    let node = record.plan.node(&changes[0].node).expect("a rescaled node is in the running plan").clone();
    let as_kept = Replica { node, replica: 0, name: kept.clone(), published: None, front: false, generation };
    let expected = containers::replica_config(deploy, &this, &network, &as_kept, &record.book, &secret)?;
    let differ = differences(&expected, &created);
    if !differ.is_empty() {
        return refuse(format!("its containers were created with another {}", differ.join(", ")));
    }

    println!(
        "app '{}' is running build {}: rescaling in place: {}",
        deploy.app,
        release.version,
        rescale::describe(&changes)
    );
    // The rescale's own time: the image check before it is the same for every `up`.
    let started = Instant::now();
    if release.env != current.env {
        println!(
            "  the variables passed with MP_PASS_ENV differ from the running release's: its containers, \
             the added ones too, keep the running release's values"
        );
    }
    let added: Vec<Replica> = changes
        .iter()
        .filter(|c| c.to > c.from)
        .flat_map(|c| {
            let node = release.plan.node(&c.node).expect("a rescaled node is in the plan").clone();
            (c.from..c.to).map(move |replica| Replica {
                name: labels::container_name(&deploy.app, &node.name, replica, generation),
                node: node.clone(),
                replica,
                published: None,
                front: false,
                generation,
            })
        })
        .collect();
    let book = rescaled_book(&record.book, &changes, &added);
    let removed: Vec<ContainerSummary> =
        running.containers.iter().filter(|c| is_removed(c, generation, &changes)).cloned().collect();

    // Ctrl-C while the added containers start counts as a failure: it cleans up like one.
    let outcome = tokio::select! {
        outcome = start_added(docker, deploy, &this, &network, &added, &book, &secret, progress) => outcome,
        _ = tokio::signal::ctrl_c() => Err(DeployError::Interrupted.into()),
    };
    if let Err(e) = outcome {
        progress.finish();
        // The running containers never heard of the added ones: removing those undoes it all.
        let names: Vec<String> = added.iter().map(|r| r.name.clone()).collect();
        let cleanup = remove_named(docker, &deploy.app, &names).await;
        let failed = DockerError::RescaleFailed { version: release.version.clone(), source: Box::new(e) };
        return Err(match cleanup {
            Ok(()) => failed,
            Err(cleanup) => DockerError::CleanupFailed {
                failure: Box::new(failed),
                cleanup: Box::new(cleanup),
                invocation: deploy.invocation.clone(),
            },
        });
    }

    let unreached = hand_out(docker, &deploy.app, generation, &network, &secret, &book, progress).await?;
    // Written before the removed replicas stop: from here on the new book is what serves.
    let record = Deployment { plan: release.plan.clone(), book: book.clone(), ..record.clone() };
    record.save()?;
    let kept_release = Release { plan: release.plan.clone(), ..current.clone() };
    History { current: Some(kept_release), previous: history.previous.clone() }.save(&deploy.app)?;
    let removed_names: Vec<String> = removed.iter().map(containers::container_name).collect();
    if !removed.is_empty() {
        progress.stage(format!("stopping {} (they finish what they serve)", removed_names.join(", ")));
        let nodes: Vec<String> = changes.iter().map(|c| c.node.clone()).collect();
        containers::retire(docker, &removed, &nodes).await?;
    }
    progress.finish();

    let started_names: Vec<String> = added.iter().map(|r| r.name.clone()).collect();
    let mut summary = format!(
        "rescaled app '{}' (docker runner), version {}, {}",
        deploy.app,
        release.version,
        crate::runner::describe_rescaled(
            started.elapsed(),
            running.containers.len() + added.len() - removed.len(),
            "containers",
            &changes,
            &started_names,
            &removed_names,
        )
    );
    if unreached > 0 {
        summary += &format!(
            " ({unreached} containers that were not running did not take the new book; they restart with the one they were created with)"
        );
    }
    println!("{summary}");
    for endpoint in &record.endpoints {
        println!("  {} listens on http://{}/", endpoint.service, endpoint.address);
    }
    println!("status:     {} status\ntear down:  {} delete", deploy.invocation, deploy.invocation);
    Ok(Some(()))
}

/// The generation a rescale changes and the release it runs, or why there is none to change:
/// the node containers of one generation, a history that names the running image, and the same
/// published ports.
fn scope<'h>(
    record: &Deployment,
    history: &'h History,
    running: &[ContainerSummary],
    release: &Release,
    same_ports: bool,
) -> Result<(u32, &'h Release), String> {
    let generations: std::collections::BTreeSet<u32> =
        running.iter().filter(|c| !is_edge(c)).map(containers::generation_of).collect();
    let generation = match generations.into_iter().collect::<Vec<_>>()[..] {
        [g] if g > 0 => g,
        [] => return Err("none of its containers is left".into()),
        [0] => return Err("an older runner deployed it".into()),
        _ => return Err("containers of more than one generation run".into()),
    };
    let current = match &history.current {
        Some(current) if current.image == release.image && current.plan == record.plan => current,
        _ => return Err("the runner keeps no history of the running release".into()),
    };
    if !same_ports {
        return Err("its services move to other ports".into());
    }
    Ok((generation, current))
}

/// The running book with the rescaled nodes' replicas: the added ones after the kept ones
/// (each by its container name, as the others), the removed ones gone.
fn rescaled_book(running: &AddressBook, changes: &[Rescale], added: &[Replica]) -> AddressBook {
    running.rescaled(changes, |node| {
        added.iter().filter(|r| r.node.name == node).map(|r| format!("{}:{CONTAINER_PORT}", r.name)).collect()
    })
}

/// Whether `container` is a replica of `generation` that the rescale removes (or one left over
/// past its node's count).
fn is_removed(container: &ContainerSummary, generation: u32, changes: &[Rescale]) -> bool {
    let replica: Option<usize> = containers::label(container, labels::REPLICA).parse().ok();
    let node = containers::label(container, labels::NODE);
    !is_edge(container)
        && containers::generation_of(container) == generation
        && changes.iter().any(|c| c.node == node && replica.is_some_and(|r| r >= c.to))
}

/// What a running container was created with, as far as a rescale compares it.
struct Created {
    image: String,
    env: BTreeMap<String, String>,
    binds: Vec<String>,
}

impl Created {
    fn var(&self, name: &str) -> Option<&str> {
        self.env.get(name).map(String::as_str)
    }
}

/// The image, environment and mounts a running container was created with; `None` if it does
/// not exist or does not run.
async fn created_as(docker: &Docker, name: &str) -> Result<Option<Created>> {
    let info = match docker
        .inspect_container(name, None::<bollard::query_parameters::InspectContainerOptions>)
        .await
    {
        Ok(info) => info,
        Err(e) if super::engine::is_not_found(&e) => return Ok(None),
        Err(e) => return Err(super::engine::failed(format!("inspecting container {name}"), e)),
    };
    if !info.state.as_ref().and_then(|s| s.running).unwrap_or(false) {
        return Ok(None);
    }
    let config = info.config.unwrap_or_default();
    Ok(Some(Created {
        image: config.image.unwrap_or_default(),
        env: env_map(config.env.as_deref().unwrap_or_default()),
        binds: info.host_config.and_then(|h| h.binds).unwrap_or_default(),
    }))
}

fn env_map(env: &[String]) -> BTreeMap<String, String> {
    env.iter().filter_map(|v| v.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// What differs between the container this deploy would create and the one that runs (names
/// only: values may be secrets). The address book is left out: containers created before a
/// rescale carry the book of their time. Variables the engine adds from the image are not the
/// runner's; every `MP_`/`OTEL_` one is.
fn differences(expected: &bollard::models::ContainerCreateBody, created: &Created) -> Vec<String> {
    let mut differ = Vec::new();
    if expected.image.as_deref() != Some(created.image.as_str()) {
        differ.push("image".to_string());
    }
    let wanted = env_map(expected.env.as_deref().unwrap_or_default());
    let ours = |name: &str| name.starts_with("MP_") || name.starts_with("OTEL_");
    let names: std::collections::BTreeSet<&String> =
        wanted.keys().chain(created.env.keys().filter(|n| ours(n))).collect();
    for name in names {
        if name != BOOK_VAR && wanted.get(name) != created.env.get(name) {
            differ.push(name.clone());
        }
    }
    let mut binds = expected.host_config.as_ref().and_then(|h| h.binds.clone()).unwrap_or_default();
    let mut running = created.binds.clone();
    binds.sort();
    running.sort();
    if binds != running {
        differ.push("mounts".to_string());
    }
    differ
}

/// Starts the added replicas and waits until each answers `/healthz`.
#[allow(clippy::too_many_arguments)]
async fn start_added(
    docker: &Docker,
    deploy: &Deploy,
    generation: &Generation<'_>,
    network: &str,
    added: &[Replica],
    book: &AddressBook,
    secret: &str,
    progress: &Progress,
) -> Result<()> {
    if added.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = added.iter().map(|r| r.name.as_str()).collect();
    progress.counted(format!("starting {}", names.join(", ")), added.len());
    let starts = added.iter().map(|replica| async {
        let started = containers::start(docker, deploy, generation, network, replica, book, secret).await;
        progress.step();
        started
    });
    for started in futures_util::future::join_all(starts).await {
        started?;
    }
    let waiting: Vec<&Replica> = added.iter().collect();
    containers::wait_healthy(docker, network, &waiting, progress).await
}

/// Hands `book` to every node container of `generation`, at its address on the app network;
/// returns how many could not take it (a container the engine is restarting).
async fn hand_out(
    docker: &Docker,
    app: &str,
    generation: u32,
    network: &str,
    secret: &str,
    book: &AddressBook,
    progress: &Progress,
) -> Result<usize> {
    let now = containers::list(docker, app).await?;
    let nodes: Vec<String> = now
        .iter()
        .filter(|c| !is_edge(c) && containers::generation_of(c) == generation)
        .map(containers::container_name)
        .collect();
    progress.stage(format!(
        "handing the new address book to the {} containers of generation {generation}",
        nodes.len()
    ));
    let handed = futures_util::future::join_all(nodes.iter().map(|name| async move {
        // A container that was just restarted may not listen yet: a few tries, briefly (and its
        // address asked again each time: a restart may give it another).
        let handed = crate::runner::retry_briefly(|| async {
            match containers::inspect(docker, name, network).await {
                Ok(containers::State { address: Some(address), .. }) => {
                    live_book::hand(&address, secret, book).await.is_ok()
                }
                _ => false,
            }
        })
        .await;
        if !handed {
            tracing::warn!(container = %name, "did not take the new address book");
        }
        handed
    }))
    .await;
    Ok(handed.iter().filter(|ok| !**ok).count())
}

/// Removes the app's containers named `names` (what a failed rescale started).
async fn remove_named(docker: &Docker, app: &str, names: &[String]) -> Result<()> {
    let now = containers::list(docker, app).await?;
    let started: Vec<ContainerSummary> =
        now.into_iter().filter(|c| names.contains(&containers::container_name(c))).collect();
    containers::remove(docker, &started).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::compile;
    use crate::model::topology::{service, spread};
    use serde_json::Value;
    use std::collections::HashMap;

    fn plan(n: usize) -> crate::model::Plan {
        compile(&[service("greeter", spread(n, |r: Value| r)).expose()]).unwrap().0
    }

    fn container(node: &str, replica: usize, generation: u32) -> ContainerSummary {
        let labels = HashMap::from([
            (labels::NODE.to_string(), node.to_string()),
            (labels::REPLICA.to_string(), replica.to_string()),
            (labels::GENERATION.to_string(), generation.to_string()),
            (labels::ROLE.to_string(), "leaf".to_string()),
        ]);
        ContainerSummary {
            names: Some(vec![format!("/app-{}-{replica}-g{generation}", node.replace('.', "-"))]),
            labels: Some(labels),
            ..Default::default()
        }
    }

    fn release(n: usize) -> Release {
        Release { version: "v".into(), image: "metaparticle/app:v".into(), plan: plan(n), env: Vec::new() }
    }

    fn record(n: usize) -> Deployment {
        Deployment {
            app: "app".into(),
            runner: "docker".into(),
            deployed_at: 0,
            endpoints: Vec::new(),
            plan: plan(n),
            book: AddressBook::default(),
            supervisor_pid: None,
            supervisor_started: None,
            version: Some("v".into()),
        }
    }

    #[test]
    fn only_one_generation_with_a_history_of_its_release_is_rescaled() {
        let history = History { current: Some(release(3)), previous: None };
        let one = vec![container("greeter", 0, 2), container("greeter.replica", 0, 2)];
        let (generation, current) = scope(&record(3), &history, &one, &release(5), true).unwrap();
        assert_eq!((generation, current), (2, &release(3)));

        let two = vec![container("greeter.replica", 0, 2), container("greeter.replica", 0, 3)];
        let why = scope(&record(3), &history, &two, &release(5), true).unwrap_err();
        assert!(why.contains("more than one generation"), "{why}");
        let why = scope(&record(3), &History::default(), &one, &release(5), true).unwrap_err();
        assert!(why.contains("no history"), "{why}");
        let other_image = Release { image: "metaparticle/app:w".into(), ..release(5) };
        assert!(scope(&record(3), &history, &one, &other_image, true).is_err());
        let why = scope(&record(3), &history, &one, &release(5), false).unwrap_err();
        assert!(why.contains("other ports"), "{why}");
    }

    #[test]
    fn the_book_gains_the_added_replicas_and_loses_the_removed_ones_and_keeps_the_rest() {
        let mut running = AddressBook::default();
        running.insert("greeter", vec!["app-greeter-0-g2:3000".into()]);
        let replicas: Vec<String> = (0..3).map(|r| format!("app-greeter-replica-{r}-g2:3000")).collect();
        running.insert("greeter.replica", replicas.clone());
        let node = plan(5).node("greeter.replica").unwrap().clone();
        let added: Vec<Replica> = (3..5)
            .map(|replica| Replica {
                node: node.clone(),
                replica,
                name: format!("app-greeter-replica-{replica}-g2"),
                published: None,
                front: false,
                generation: 2,
            })
            .collect();
        let grow = [Rescale { node: "greeter.replica".into(), from: 3, to: 5 }];
        let grown = rescaled_book(&running, &grow, &added);
        assert_eq!(grown.addresses("greeter").unwrap(), running.addresses("greeter").unwrap());
        let mut expected = replicas.clone();
        expected.extend(["app-greeter-replica-3-g2:3000".into(), "app-greeter-replica-4-g2:3000".into()]);
        assert_eq!(grown.addresses("greeter.replica").unwrap(), expected);

        let shrink = [Rescale { node: "greeter.replica".into(), from: 5, to: 2 }];
        let shrunk = rescaled_book(&grown, &shrink, &[]);
        assert_eq!(shrunk.addresses("greeter.replica").unwrap(), &replicas[..2]);
        let removed: Vec<usize> =
            (0..5).filter(|&r| is_removed(&container("greeter.replica", r, 2), 2, &shrink)).collect();
        assert_eq!(removed, [2, 3, 4]);
        assert!(!is_removed(&container("greeter", 0, 2), 2, &shrink), "another node stays");
        assert!(!is_removed(&container("greeter.replica", 4, 1), 2, &shrink), "another generation's");
    }

    #[test]
    fn a_container_created_otherwise_is_named_by_what_differs_and_never_by_its_values() {
        let expected = bollard::models::ContainerCreateBody {
            image: Some("metaparticle/app:v".into()),
            env: Some(vec![
                "MP_SECRET=s3cret".into(),
                "MP_ADDRESS_BOOK={}".into(),
                "MP_STORAGE=file:/metaparticle-state/a.sqlite".into(),
            ]),
            host_config: Some(bollard::models::HostConfig {
                binds: Some(vec!["/home/a:/metaparticle-state".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = Created {
            image: "metaparticle/app:v".into(),
            env: env_map(&[
                "MP_SECRET=s3cret".into(),
                "MP_ADDRESS_BOOK={\"n\":[]}".into(),
                "MP_STORAGE=file:/metaparticle-state/a.sqlite".into(),
                "PATH=/".into(),
            ]),
            binds: vec!["/home/a:/metaparticle-state".into()],
        };
        assert!(
            differences(&expected, &created).is_empty(),
            "an older book and the image's PATH do not count"
        );
        let other = Created {
            image: "metaparticle/app:w".into(),
            env: env_map(&["MP_SECRET=other".into(), "MP_LOG=debug".into()]),
            binds: Vec::new(),
        };
        let differ = differences(&expected, &other);
        assert_eq!(differ, ["image", "MP_LOG", "MP_SECRET", "MP_STORAGE", "mounts"]);
        assert!(!differ.join(" ").contains("s3cret"));
    }
}
