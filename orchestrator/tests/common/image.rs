//! Test images: a small OCI image built from Debian's static busybox with umoci.

use std::path::Path;
use std::process::Command;

/// Whether the image tools the tests drive are installed (scripts/test.sh installs them).
pub fn have_tools(test: &str) -> bool {
    if !super::can_run(test) {
        return false;
    }
    for tool in ["umoci", "skopeo", "docker-registry"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            println!("SKIPPED: {test}: {tool} is not installed (scripts/test.sh installs it)");
            return false;
        }
    }
    if !Path::new("/bin/busybox").is_file() {
        println!("SKIPPED: {test}: /bin/busybox (busybox-static) is not installed");
        return false;
    }
    true
}

pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Builds an OCI layout at `layout` holding image `tag`: busybox and its applets, a file
/// `/etc/cairn-image` saying `marker` (the host has no such file), Cmd printing `from-cmd` and
/// the working directory, PATH=/bin, WorkingDir /etc.
pub fn build_image(layout: &Path, tag: &str, marker: &str) {
    let image = format!("{}:{tag}", layout.display());
    if !layout.join("index.json").exists() {
        run(
            "umoci",
            &["init", "--layout", &layout.display().to_string()],
        );
    }
    run("umoci", &["new", "--image", &image]);
    let bundle = layout.with_extension(format!("bundle-{tag}"));
    run(
        "umoci",
        &["unpack", "--image", &image, &bundle.display().to_string()],
    );
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "cat", "echo", "ls", "sleep", "touch", "test", "pwd", "id", "mkdir", "rm", "httpd",
        "wget", "nc", "tail", "head", "date", "mv", "printf", "nslookup", "env", "hostname",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    std::fs::write(rootfs.join("etc/cairn-image"), format!("{marker}\n")).unwrap();
    run(
        "umoci",
        &["repack", "--image", &image, &bundle.display().to_string()],
    );
    run(
        "umoci",
        &[
            "config",
            "--image",
            &image,
            "--config.cmd",
            "/bin/sh",
            "--config.cmd",
            "-c",
            "--config.cmd",
            "echo from-cmd $PWD; exec sleep 300",
            "--config.env",
            "PATH=/bin",
            "--config.workingdir",
            "/etc",
        ],
    );
    std::fs::remove_dir_all(&bundle).unwrap();
}
