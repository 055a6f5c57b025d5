//! Image references as Kubernetes and Docker read them: `busybox` is
//! `docker.io/library/busybox:latest`, a first component with a `.` or `:` (or `localhost`) names a
//! registry, a digest pins the content. Which registries are spoken to over plain HTTP is decided
//! here too: only those on the loopback interface, which Docker treats as insecure by default.

use std::net::IpAddr;

pub use oci_client::Reference;

use super::ImageError;

/// `name` in its fully qualified form, with the default tag applied when it has neither tag nor
/// digest. Only sha256 digests are accepted: they are what the store addresses content by.
pub fn normalize(name: &str) -> Result<Reference, ImageError> {
    let r: Reference = name.parse().map_err(|e: oci_client::ParseError| {
        ImageError::InvalidReference(name.to_string(), e.to_string())
    })?;
    if let Some(d) = r.digest() {
        if !d.starts_with("sha256:") {
            return Err(ImageError::InvalidReference(
                name.to_string(),
                "only sha256 digests are supported".into(),
            ));
        }
    }
    Ok(r)
}

/// `registry/repository` without tag or digest: the REPOSITORY column.
pub fn repository(r: &Reference) -> String {
    format!("{}/{}", r.registry(), r.repository())
}

/// The name kept for `r` in the store's index: `repo:tag` when it has a tag, else `repo@digest`.
pub fn index_name(r: &Reference) -> String {
    match (r.tag(), r.digest()) {
        (Some(t), _) => format!("{}:{t}", repository(r)),
        (None, Some(d)) => format!("{}@{d}", repository(r)),
        (None, None) => format!("{}:latest", repository(r)),
    }
}

/// Whether the registry host is on the loopback interface (`localhost`, 127.0.0.0/8, ::1).
pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_qualified_as_docker_does() {
        let n = |s: &str| normalize(s).unwrap().to_string();
        assert_eq!(n("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(n("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(n("user/app"), "docker.io/user/app:latest");
        assert_eq!(n("quay.io/a/b:v1"), "quay.io/a/b:v1");
        assert_eq!(n("localhost/app"), "localhost/app:latest");
        assert_eq!(n("127.0.0.1:5000/busybox:1"), "127.0.0.1:5000/busybox:1");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            n(&format!("busybox@{d}")),
            format!("docker.io/library/busybox@{d}")
        );
        assert_eq!(
            index_name(&normalize(&format!("busybox@{d}")).unwrap()),
            format!("docker.io/library/busybox@{d}")
        );
    }

    #[test]
    fn malformed_references_are_refused() {
        for bad in ["", "Busybox", "busybox:", "a@sha256:12", "a b"] {
            assert!(normalize(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_loopback_registries_are_plain_http() {
        for r in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.3.4.5",
            "[::1]:5000",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in [
            "docker.io",
            "10.0.0.1:5000",
            "registry.local:5000",
            "[fe80::1]:5000",
        ] {
            assert!(!is_loopback(r), "{r}");
        }
    }
}
