//! The Kubernetes runner's settings (`MAINLOOP_K8S_*`): task namespaces, the agents' egress,
//! image pulls, resources and how long finished Jobs stay. Defaults are the runner's own
//! (`KubernetesSettings::new`, `JobResources::default`), so they are written once.

use std::net::IpAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};
use mainloop_activities::jobs::kubernetes::{JobResources, KubernetesSettings};

#[derive(Debug, Args)]
pub struct KubernetesArgs {
    /// `kubernetes`: task namespaces are named this prefix followed by the task id.
    #[arg(long, env = "MAINLOOP_K8S_NAMESPACE_PREFIX", default_value_t = defaults().namespace_prefix)]
    pub k8s_namespace_prefix: String,
    /// `kubernetes`: TCP ports the agents may reach outside the excluded ranges (comma
    /// separated).
    #[arg(
        long,
        env = "MAINLOOP_K8S_EGRESS_PORTS",
        value_delimiter = ',',
        default_values_t = defaults().egress_ports
    )]
    pub k8s_egress_ports: Vec<u16>,
    /// `kubernetes`: address ranges (CIDR, comma separated) the agents may not reach: the
    /// cluster's pod and service networks and everything internal (the default lists the
    /// private, loopback, link-local, CGNAT and unique-local ranges).
    #[arg(
        long,
        env = "MAINLOOP_K8S_EGRESS_EXCLUDED_CIDRS",
        value_delimiter = ',',
        value_parser = cidr,
        default_values_t = defaults().egress_excluded_cidrs
    )]
    pub k8s_egress_excluded_cidrs: Vec<String>,
    /// `kubernetes`: registry Secrets the agent pods pull their image with (comma separated;
    /// each must exist in every task namespace).
    #[arg(long, env = "MAINLOOP_K8S_IMAGE_PULL_SECRETS", value_delimiter = ',')]
    pub k8s_image_pull_secrets: Vec<String>,
    /// `kubernetes`: when the agent image is pulled; unset: the cluster's default.
    #[arg(long, env = "MAINLOOP_K8S_IMAGE_PULL_POLICY", value_enum)]
    pub k8s_image_pull_policy: Option<PullPolicy>,
    /// `kubernetes`: CPU the agent container requests.
    #[arg(long, env = "MAINLOOP_K8S_JOB_CPU_REQUEST", default_value_t = JobResources::default().cpu_request)]
    pub k8s_job_cpu_request: String,
    /// `kubernetes`: memory the agent container requests.
    #[arg(long, env = "MAINLOOP_K8S_JOB_MEMORY_REQUEST", default_value_t = JobResources::default().memory_request)]
    pub k8s_job_memory_request: String,
    /// `kubernetes`: most CPU the agent container may use.
    #[arg(long, env = "MAINLOOP_K8S_JOB_CPU_LIMIT", default_value_t = JobResources::default().cpu_limit)]
    pub k8s_job_cpu_limit: String,
    /// `kubernetes`: most memory the agent container may use.
    #[arg(long, env = "MAINLOOP_K8S_JOB_MEMORY_LIMIT", default_value_t = JobResources::default().memory_limit)]
    pub k8s_job_memory_limit: String,
    /// `kubernetes`: how long a finished Job (and its pod and log) stays before the cluster
    /// removes it.
    #[arg(long, env = "MAINLOOP_K8S_JOB_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub k8s_job_ttl: Duration,
}

/// `imagePullPolicy`, spelled as Kubernetes spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PullPolicy {
    #[value(name = "Always")]
    Always,
    #[value(name = "IfNotPresent")]
    IfNotPresent,
    #[value(name = "Never")]
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

impl KubernetesArgs {
    /// The runner's settings for jobs of `image` (secrets and environment are added by the
    /// caller).
    ///
    /// # Errors
    /// If the TTL does not fit Kubernetes' `ttlSecondsAfterFinished` (an `int32`).
    pub fn settings(&self, image: &str) -> anyhow::Result<KubernetesSettings> {
        let mut settings = KubernetesSettings::new(image);
        settings.namespace_prefix = self.k8s_namespace_prefix.clone();
        settings.egress_ports = self.k8s_egress_ports.clone();
        settings.egress_excluded_cidrs = self.k8s_egress_excluded_cidrs.clone();
        settings.image_pull_secrets = self
            .k8s_image_pull_secrets
            .iter()
            .map(|name| name.trim().to_string())
            .filter(|name| !name.is_empty())
            .collect();
        settings.image_pull_policy = self.k8s_image_pull_policy.map(|p| p.as_str().to_string());
        settings.resources = JobResources {
            cpu_request: self.k8s_job_cpu_request.clone(),
            memory_request: self.k8s_job_memory_request.clone(),
            cpu_limit: self.k8s_job_cpu_limit.clone(),
            memory_limit: self.k8s_job_memory_limit.clone(),
        };
        settings.ttl_seconds_after_finished =
            i32::try_from(self.k8s_job_ttl.as_secs()).map_err(|_| {
                anyhow::anyhow!(
                    "MAINLOOP_K8S_JOB_TTL is {}, more than Kubernetes allows (about 68 years)",
                    humantime::format_duration(self.k8s_job_ttl)
                )
            })?;
        Ok(settings)
    }
}

/// The runner's defaults, which the flags' defaults are.
fn defaults() -> KubernetesSettings {
    KubernetesSettings::new(String::new())
}

/// Checks a CIDR range (`10.0.0.0/8`, `fc00::/7`) at start-up, rather than at the first job,
/// where the cluster would refuse the NetworkPolicy.
fn cidr(text: &str) -> Result<String, String> {
    let text = text.trim();
    let refused = || {
        format!(
            "{text:?} is not a CIDR range (an IPv4 or IPv6 address, `/` and a prefix length, \
             e.g. 10.0.0.0/8 or fc00::/7)"
        )
    };
    let (address, length) = text.split_once('/').ok_or_else(refused)?;
    let address: IpAddr = address.parse().map_err(|_| refused())?;
    let length: u8 = length.parse().map_err(|_| refused())?;
    let most = if address.is_ipv4() { 32 } else { 128 };
    if length > most {
        return Err(refused());
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::config::{Cli, Command, WorkerArgs};

    fn worker_args(flags: &[&str]) -> Result<WorkerArgs, clap::Error> {
        let cli = Cli::try_parse_from(["mainloop", "worker"].iter().chain(flags))?;
        let Command::Worker(args) = cli.command else {
            panic!("not the worker");
        };
        Ok(args)
    }

    fn kubernetes(flags: &[&str]) -> KubernetesSettings {
        let args = worker_args(flags).unwrap_or_else(|e| panic!("{e}"));
        args.tasks
            .kubernetes
            .settings(&args.tasks.agent_image)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    #[test]
    fn kubernetes_flags_reach_the_runners_settings() {
        let settings = kubernetes(&[
            "--agent-image",
            "registry.example/agent:7",
            "--k8s-namespace-prefix",
            "ml-",
            "--k8s-egress-ports",
            "443,8443",
            "--k8s-egress-excluded-cidrs",
            "10.0.0.0/8, fd00::/8",
            "--k8s-image-pull-secrets",
            "ghcr,quay",
            "--k8s-image-pull-policy",
            "IfNotPresent",
            "--k8s-job-cpu-request",
            "250m",
            "--k8s-job-memory-request",
            "512Mi",
            "--k8s-job-cpu-limit",
            "1",
            "--k8s-job-memory-limit",
            "2Gi",
            "--k8s-job-ttl",
            "10m",
        ]);
        assert_eq!(settings.image, "registry.example/agent:7");
        assert_eq!(settings.namespace_prefix, "ml-");
        assert_eq!(settings.egress_ports, [443, 8443]);
        assert_eq!(settings.egress_excluded_cidrs, ["10.0.0.0/8", "fd00::/8"]);
        assert_eq!(settings.image_pull_secrets, ["ghcr", "quay"]);
        assert_eq!(settings.image_pull_policy.as_deref(), Some("IfNotPresent"));
        assert_eq!(
            settings.resources,
            JobResources {
                cpu_request: "250m".into(),
                memory_request: "512Mi".into(),
                cpu_limit: "1".into(),
                memory_limit: "2Gi".into(),
            }
        );
        assert_eq!(settings.ttl_seconds_after_finished, 600);
    }

    #[test]
    fn without_flags_kubernetes_jobs_get_the_runners_defaults_and_a_pinned_image() {
        let settings = kubernetes(&[]);
        let runner = KubernetesSettings::new(settings.image.clone());
        assert_eq!(
            settings.image,
            format!(
                "ghcr.io/mainloop-dev/mainloop-agent:{}",
                env!("CARGO_PKG_VERSION")
            )
        );
        assert_eq!(settings.namespace_prefix, "mainloop-task-");
        assert_eq!(settings.namespace_prefix, runner.namespace_prefix);
        assert_eq!(settings.egress_ports, [443]);
        assert_eq!(settings.egress_excluded_cidrs, runner.egress_excluded_cidrs);
        assert!(settings.image_pull_secrets.is_empty());
        assert_eq!(settings.image_pull_policy, None);
        assert_eq!(settings.resources, JobResources::default());
        assert_eq!(settings.ttl_seconds_after_finished, 3600);
        assert_eq!(
            settings.ttl_seconds_after_finished,
            runner.ttl_seconds_after_finished
        );
    }

    #[test]
    fn a_bad_cidr_is_refused_at_start_up_by_name() {
        for bad in [
            "10.1.0.0/33",
            "10.1.0.0",
            "example.com/8",
            "::1/129",
            "10.1.0.0/x",
        ] {
            let flags = ["--k8s-egress-excluded-cidrs", &format!("10.0.0.0/8,{bad}")];
            let Err(error) = worker_args(&flags.iter().map(|f| f.as_ref()).collect::<Vec<_>>())
            else {
                panic!("{bad} was accepted");
            };
            let message = error.to_string();
            assert!(
                message.contains(&format!("{bad:?} is not a CIDR range")),
                "{message}"
            );
        }
        assert!(
            worker_args(&["--k8s-image-pull-policy", "Sometimes"]).is_err(),
            "an unknown pull policy was accepted"
        );
    }
}
