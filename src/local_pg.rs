//! Throwaway local PostgreSQL clusters, for `pgcell demo` and the tests.
//!
//! A cluster lives in a temporary directory, listens on 127.0.0.1 on a free
//! port with SCRAM authentication for TCP (trust only on its own Unix
//! socket, for setup), and is stopped and removed when dropped. `initdb`
//! and `postgres` refuse to run as root, so as root the cluster runs as the
//! `postgres` system user.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Password of the `postgres` superuser in every throwaway cluster.
pub(crate) const SUPERUSER_PASSWORD: &str = "pgcell-superuser";

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A running throwaway cluster.
#[derive(Debug)]
pub struct Cluster {
    name: String,
    base: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    bin: PathBuf,
    port: u16,
    run_as: Option<String>,
    stopped: bool,
}

/// Finds the directory holding `initdb`, `pg_ctl` and `postgres`: `PATH`
/// first, then the newest `/usr/lib/postgresql/*/bin`. A `pg_ctl` found
/// on `PATH` as a link leads to the installation's own directory, which
/// also holds `pg_basebackup` and the rest.
pub(crate) fn find_bin_dir() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                let real = std::fs::canonicalize(dir.join("pg_ctl"))
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf))
                    .filter(|d| d.join("initdb").is_file());
                return Some(real.unwrap_or(dir));
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

impl Cluster {
    /// Creates and starts a cluster whose `cluster_name` is `name`, with
    /// extra `postgresql.conf` lines.
    pub fn start(name: &str, extra_conf: &[&str]) -> io::Result<Cluster> {
        Cluster::start_with_files(name, extra_conf, &[])
    }

    /// Like [`Cluster::start`], first writing `files` (name, contents) into
    /// the data directory with mode 0600, e.g. `server.crt`/`server.key`
    /// for `ssl = on`.
    pub fn start_with_files(
        name: &str,
        extra_conf: &[&str],
        files: &[(&str, &[u8])],
    ) -> io::Result<Cluster> {
        let bin = find_bin_dir().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "PostgreSQL server binaries (initdb, pg_ctl) not found in PATH or /usr/lib/postgresql/*/bin",
            )
        })?;
        let run_as = is_root().then(|| "postgres".to_owned());
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let base = std::env::temp_dir().join(format!("pgcell-{name}-{}-{id}", std::process::id()));
        if base.exists() {
            std::fs::remove_dir_all(&base)?;
        }
        std::fs::create_dir_all(&base)?;
        let data = base.join("data");
        let socket_dir = base.join("sock");
        std::fs::create_dir_all(&socket_dir)?;
        let pwfile = base.join("pwfile");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD)?;
        if let Some(user) = &run_as {
            chown_to(&base, user)?;
            chown_to(&socket_dir, user)?;
            chown_to(&pwfile, user)?;
        }
        let mut cluster = Cluster {
            name: name.to_owned(),
            base,
            data,
            socket_dir,
            bin,
            port: 0,
            run_as,
            stopped: true,
        };
        cluster.run_checked(
            "initdb",
            &[
                "-N",
                "-D",
                path_str(&cluster.data)?,
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--pwfile",
                path_str(&pwfile)?,
                "-E",
                "UTF8",
                "--locale=C",
            ],
        )?;
        let mut conf = format!(
            "\n# pgcell throwaway cluster\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\ncluster_name = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n\
             password_encryption = 'scram-sha-256'\nlog_min_messages = warning\n",
            cluster.socket_dir.display(),
            name
        );
        for line in extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        append(&cluster.data.join("postgresql.conf"), &conf)?;
        for (file, contents) in files {
            let path = cluster.data.join(file);
            std::fs::write(&path, contents)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            if let Some(user) = &cluster.run_as {
                chown_to(&path, user)?;
            }
        }
        cluster.start_on_free_port()?;
        Ok(cluster)
    }

    fn start_on_free_port(&mut self) -> io::Result<()> {
        let mut last = None;
        // Keep what else the file holds (a replica's primary_conninfo).
        let auto = self.data.join("postgresql.auto.conf");
        let kept: String = std::fs::read_to_string(&auto)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim_start().starts_with("port"))
            .map(|l| format!("{l}\n"))
            .collect();
        for _ in 0..5 {
            self.port = free_port()?;
            let port_line = format!("{kept}port = {}\n", self.port);
            std::fs::write(&auto, port_line)?;
            match self.restart() {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("postgres did not start")))
    }

    /// A streaming replica of `primary` (`pg_basebackup -R` over its Unix
    /// socket), started on a free port, named `name`.
    pub fn replica_of(primary: &Cluster, name: &str) -> io::Result<Cluster> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let base = std::env::temp_dir().join(format!("pgcell-{name}-{}-{id}", std::process::id()));
        if base.exists() {
            std::fs::remove_dir_all(&base)?;
        }
        std::fs::create_dir_all(&base)?;
        let data = base.join("data");
        let socket_dir = base.join("sock");
        std::fs::create_dir_all(&socket_dir)?;
        if let Some(user) = &primary.run_as {
            chown_to(&base, user)?;
            chown_to(&socket_dir, user)?;
        }
        let mut replica = Cluster {
            name: name.to_owned(),
            base,
            data,
            socket_dir,
            bin: primary.bin.clone(),
            port: 0,
            run_as: primary.run_as.clone(),
            stopped: true,
        };
        let socket = path_str(&primary.socket_dir)?.to_owned();
        let port = primary.port.to_string();
        let data = path_str(&replica.data)?.to_owned();
        replica.run_checked(
            "pg_basebackup",
            &[
                "-h", &socket, "-p", &port, "-U", "postgres", "-D", &data, "-R", "-X", "stream",
                "-c", "fast",
            ],
        )?;
        let conf = format!(
            "\n# replica\nunix_socket_directories = '{}'\ncluster_name = '{}'\nhot_standby = on\n",
            replica.socket_dir.display(),
            name
        );
        append(&replica.data.join("postgresql.conf"), &conf)?;
        replica.start_on_free_port()?;
        Ok(replica)
    }

    /// Promotes a replica (`pg_ctl promote`, waiting until it is done).
    pub fn promote(&self) -> io::Result<()> {
        self.run_checked("pg_ctl", &["-D", path_str(&self.data)?, "-w", "promote"])
            .map(|_| ())
    }

    /// Makes a stopped server a standby of `primary` and starts it (an
    /// old primary coming back after a failover).
    pub fn restart_as_standby_of(&mut self, primary: &Cluster) -> io::Result<()> {
        let auto = self.data.join("postgresql.auto.conf");
        let conninfo = format!(
            "primary_conninfo = 'host={} port={} user=postgres'\nport = {}\n",
            primary.socket_dir.display(),
            primary.port,
            self.port
        );
        std::fs::write(&auto, conninfo)?;
        std::fs::write(self.data.join("standby.signal"), "")?;
        if let Some(user) = &self.run_as {
            chown_to(&auto, user)?;
            chown_to(&self.data.join("standby.signal"), user)?;
        }
        self.restart()
    }

    /// The cluster's `cluster_name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Runs `sql` as the superuser over the Unix socket and returns the
    /// unaligned, tuples-only output.
    pub fn psql(&self, database: &str, sql: &str) -> io::Result<String> {
        let psql = if self.bin.join("psql").is_file() {
            self.bin.join("psql")
        } else {
            PathBuf::from("psql")
        };
        let out = Command::new(psql)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()?;
        checked("psql", out).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    }

    /// Stops the server; `mode` is a `pg_ctl stop -m` mode (`fast`,
    /// `immediate`).
    pub fn stop(&mut self, mode: &str) -> io::Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        self.run_checked(
            "pg_ctl",
            &["-D", path_str(&self.data)?, "-m", mode, "-w", "stop"],
        )
        .map(|_| ())
    }

    /// Starts the server again on the same port after [`Cluster::stop`].
    pub fn restart(&mut self) -> io::Result<()> {
        let log = self.base.join("postgres.log");
        self.run_checked(
            "pg_ctl",
            &[
                "-D",
                path_str(&self.data)?,
                "-l",
                path_str(&log)?,
                "-w",
                "-t",
                "30",
                "start",
            ],
        )?;
        self.stopped = false;
        Ok(())
    }

    fn run_checked(&self, program: &str, args: &[&str]) -> io::Result<Output> {
        let exe = self.bin.join(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let out = cmd
            .args(args)
            .current_dir(&self.base)
            .stdin(Stdio::null())
            .output()?;
        checked(program, out)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stop("immediate");
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

fn checked(program: &str, out: Output) -> io::Result<Output> {
    if out.status.success() {
        return Ok(out);
    }
    Err(io::Error::other(format!(
        "{program} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    )))
}

fn path_str(p: &Path) -> io::Result<&str> {
    p.to_str()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "non-UTF-8 temp path"))
}

fn append(path: &Path, text: &str) -> io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    f.write_all(text.as_bytes())
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn chown_to(path: &Path, user: &str) -> io::Result<()> {
    let id = |flag: &str| -> io::Result<u32> {
        let out = checked("id", Command::new("id").args([flag, user]).output()?)?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| io::Error::other(format!("cannot read the id of user {user}")))
    };
    std::os::unix::fs::chown(path, Some(id("-u")?), Some(id("-g")?))
}
