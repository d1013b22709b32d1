//! The Docker API through bollard: connecting, volume mount points, containers using a volume, labels.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use bollard::container::ListContainersOptions;
use bollard::Docker;

/// Default Docker endpoint.
pub(crate) const DEFAULT_DOCKER: &str = "unix:///var/run/docker.sock";

/// Connect to `url` (`unix:///path`) and agree on an API version with the daemon.
pub(crate) async fn connect(url: &str) -> anyhow::Result<Docker> {
    let path = url.strip_prefix("unix://").unwrap_or(url);
    let docker = Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION)
        .with_context(|| format!("cannot connect to Docker at {url}"))?;
    docker
        .negotiate_version()
        .await
        .with_context(|| format!("Docker at {url} does not answer; is dockerd running?"))
}

/// A Docker volume as the daemon describes it.
#[derive(Debug, Clone)]
pub(crate) struct DockerVolume {
    pub driver: String,
    pub mountpoint: PathBuf,
}

/// Look a volume up in Docker; `None` when Docker has no such volume.
pub(crate) async fn volume(docker: &Docker, name: &str) -> anyhow::Result<Option<DockerVolume>> {
    match docker.inspect_volume(name).await {
        Ok(v) => Ok(Some(DockerVolume {
            driver: v.driver,
            mountpoint: PathBuf::from(v.mountpoint),
        })),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot inspect Docker volume {name}")),
    }
}

/// A container, as much as we need of it.
#[derive(Debug, Clone)]
pub(crate) struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub running: bool,
    pub labels: HashMap<String, String>,
    /// The image it was created from, as Docker lists it (`postgres:16`, or an id).
    pub image: String,
    /// Names of the named volumes it mounts.
    pub volumes: Vec<String>,
}

#[cfg(test)]
impl ContainerInfo {
    /// A running `busybox` container named `name` with `labels` (unit-test fixture).
    pub(crate) fn fixture(name: &str, labels: &[(&str, &str)]) -> ContainerInfo {
        ContainerInfo {
            id: format!("id-{name}"),
            name: name.into(),
            running: true,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            image: "busybox".into(),
            volumes: vec![],
        }
    }
}

/// Containers matching Docker list `filters` (`all`: stopped ones too), as `ContainerInfo`.
pub(crate) async fn list(
    docker: &Docker,
    all: bool,
    filters: HashMap<String, Vec<String>>,
) -> anyhow::Result<Vec<ContainerInfo>> {
    let list = docker
        .list_containers(Some(ListContainersOptions {
            all,
            filters,
            ..Default::default()
        }))
        .await
        .context("cannot list containers")?;
    Ok(list.into_iter().map(info).collect())
}

/// All containers (running or not), optionally only those using `volume`.
pub(crate) async fn containers(
    docker: &Docker,
    volume: Option<&str>,
) -> anyhow::Result<Vec<ContainerInfo>> {
    let mut filters = HashMap::new();
    if let Some(v) = volume {
        filters.insert("volume".to_string(), vec![v.to_string()]);
    }
    list(docker, true, filters).await
}

fn info(c: bollard::models::ContainerSummary) -> ContainerInfo {
    ContainerInfo {
        id: c.id.unwrap_or_default(),
        name: c
            .names
            .and_then(|n| n.first().cloned())
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        running: c.state.as_deref() == Some("running"),
        labels: c.labels.unwrap_or_default(),
        image: c.image.unwrap_or_default(),
        volumes: c
            .mounts
            .unwrap_or_default()
            .into_iter()
            .filter(|m| m.typ == Some(bollard::models::MountPointTypeEnum::VOLUME))
            .filter_map(|m| m.name)
            .collect(),
    }
}

/// Run a Docker API future to completion for a synchronous caller, on the process's shared
/// runtime ([`crate::core::runtime`]).
pub(crate) fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    Ok(crate::core::runtime::shared()?.block_on(f))
}

/// The `Env` settings (`KEY=VALUE`) of managed plugin `name` (`docker plugin inspect`), or
/// `None` when dockerd has no such plugin. bollard has no plugin API: one GET through hyper.
pub(crate) async fn plugin_env(url: &str, name: &str) -> anyhow::Result<Option<Vec<String>>> {
    use http_body_util::{BodyExt, Empty};
    let path = url.strip_prefix("unix://").unwrap_or(url);
    let stream = tokio::net::UnixStream::connect(path)
        .await
        .with_context(|| format!("cannot connect to Docker at {url}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .context("Docker did not answer")?;
    tokio::spawn(conn);
    let req = hyper::Request::get(format!("/plugins/{name}/json"))
        .header("Host", "docker")
        .body(Empty::<bytes::Bytes>::new())?;
    let resp = sender
        .send_request(req)
        .await
        .context("Docker did not answer")?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if status == hyper::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !status.is_success() {
        anyhow::bail!(
            "Docker answered {status} for plugin {name}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    #[derive(serde::Deserialize)]
    struct Settings {
        #[serde(rename = "Env", default)]
        env: Vec<String>,
    }
    #[derive(serde::Deserialize)]
    struct Plugin {
        #[serde(rename = "Settings")]
        settings: Settings,
    }
    let p: Plugin = serde_json::from_slice(&body).context("Docker's plugin description")?;
    Ok(Some(p.settings.env))
}

/// The names of the running containers that use a volume, through the Docker API.
pub(crate) fn running_users(
    docker_url: &str,
    name: &crate::core::names::VolumeName,
) -> anyhow::Result<Vec<String>> {
    block_on(async {
        let d = connect(docker_url).await?;
        let cs = containers(&d, Some(name)).await?;
        anyhow::Ok(
            cs.into_iter()
                .filter(|c| c.running)
                .map(|c| c.name)
                .collect(),
        )
    })?
}
