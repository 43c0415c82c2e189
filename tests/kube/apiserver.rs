//! A fake Kubernetes API server: list and watch (with resourceVersion,
//! bookmarks, 410 Gone, `labelSelector` and `fieldSelector`) for
//! PgcellTenants, Secrets and EndpointSlices, on the real paths and in the
//! real JSON shapes, so that a real `kube::Client` talks to it.
//!
//! [`ApiServer::grant_secrets`] makes it authorize Secrets as RBAC does
//! for a Role whose rule names them in `resourceNames`: a list or watch
//! is allowed only when its field selector requires `metadata.name` to be
//! one of them (the apiserver takes the request's name from such a
//! selector), and gets `403 Forbidden` otherwise.
//!
//! Tests change objects through [`ApiServer`]'s methods; every change gets
//! the next resourceVersion and goes to open watches. [`ApiServer::break_watches`]
//! ends every open watch stream, [`ApiServer::expire_next_watch`] makes the
//! next watch of a resource answer with an ERROR event carrying a 410
//! Status (as an apiserver does when the requested version is compacted).

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, watch};

/// The resources served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Tenant,
    Secret,
    Slice,
}

impl Kind {
    fn api_version(self) -> &'static str {
        match self {
            Kind::Tenant => "pgcell.io/v1alpha1",
            Kind::Secret => "v1",
            Kind::Slice => "discovery.k8s.io/v1",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Kind::Tenant => "PgcellTenant",
            Kind::Secret => "Secret",
            Kind::Slice => "EndpointSlice",
        }
    }

    /// `(kind, namespace)` from a request path.
    fn parse(path: &str) -> Option<(Kind, String)> {
        let (prefix, rest) = if let Some(rest) = path.strip_prefix("/apis/pgcell.io/v1alpha1/") {
            (Kind::Tenant, rest)
        } else if let Some(rest) = path.strip_prefix("/api/v1/") {
            (Kind::Secret, rest)
        } else if let Some(rest) = path.strip_prefix("/apis/discovery.k8s.io/v1/") {
            (Kind::Slice, rest)
        } else {
            return None;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let plural = match prefix {
            Kind::Tenant => "pgcelltenants",
            Kind::Secret => "secrets",
            Kind::Slice => "endpointslices",
        };
        match parts.as_slice() {
            ["namespaces", ns, p] if *p == plural => Some((prefix, (*ns).to_owned())),
            _ => None,
        }
    }
}

/// One change, as watch streams send it.
#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    kind: Kind,
    namespace: String,
    kind_of_event: &'static str,
    object: Value,
}

#[derive(Default)]
struct Objects {
    rv: u64,
    /// Current objects by (kind, namespace, name).
    live: BTreeMap<(Kind, String, String), Value>,
    /// Every change so far, oldest first.
    history: Vec<Change>,
    /// Resources whose next watch gets 410 Gone.
    expire: HashSet<Kind>,
    /// List requests served, by resource.
    lists: HashMap<Kind, usize>,
    /// Watch requests served, by resource.
    watches: HashMap<Kind, usize>,
    /// Secret names a list or watch may name; any Secret when `None`.
    granted_secrets: Option<HashSet<String>>,
    /// Requests refused with 403, by resource.
    forbidden: HashMap<Kind, usize>,
    /// Names of the objects sent to clients (in lists and watch events),
    /// by resource.
    served: HashMap<Kind, HashSet<String>>,
}

struct Inner {
    objects: Mutex<Objects>,
    changes: broadcast::Sender<Change>,
    /// Bumped to end every open watch stream.
    cut: watch::Sender<u64>,
}

/// The fake server; cheap to clone.
#[derive(Clone)]
pub struct ApiServer {
    inner: Arc<Inner>,
    pub addr: SocketAddr,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl ApiServer {
    /// Serves on 127.0.0.1, a port the kernel picks.
    pub async fn start() -> ApiServer {
        let inner = Arc::new(Inner {
            objects: Mutex::new(Objects {
                rv: 100,
                ..Objects::default()
            }),
            changes: broadcast::channel(1024).0,
            cut: watch::Sender::new(0),
        });
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        ApiServer {
            inner,
            addr,
            task: Arc::new(task),
        }
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates or replaces `object` (its `metadata.name` names it).
    pub fn apply(&self, kind: Kind, namespace: &str, mut object: Value) {
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        let mut objects = self.inner.objects.lock().unwrap();
        objects.rv += 1;
        let rv = objects.rv;
        object["apiVersion"] = json!(kind.api_version());
        object["kind"] = json!(kind.kind());
        object["metadata"]["namespace"] = json!(namespace);
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        object["metadata"]["uid"] = json!(format!("uid-{namespace}-{name}"));
        let key = (kind, namespace.to_owned(), name);
        let event = if objects.live.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        objects.live.insert(key, object.clone());
        self.record(&mut objects, rv, kind, namespace, event, object);
    }

    /// Deletes the object `name`, if present.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) {
        let mut objects = self.inner.objects.lock().unwrap();
        let Some(mut object) = objects
            .live
            .remove(&(kind, namespace.to_owned(), name.to_owned()))
        else {
            return;
        };
        objects.rv += 1;
        let rv = objects.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.record(&mut objects, rv, kind, namespace, "DELETED", object);
    }

    fn record(
        &self,
        objects: &mut Objects,
        rv: u64,
        kind: Kind,
        namespace: &str,
        event: &'static str,
        object: Value,
    ) {
        let change = Change {
            rv,
            kind,
            namespace: namespace.to_owned(),
            kind_of_event: event,
            object,
        };
        objects.history.push(change.clone());
        // Sent under the lock, so that watches see changes in order.
        let _ = self.inner.changes.send(change);
    }

    /// Ends every open watch stream (as an apiserver restart or a load
    /// balancer timeout would).
    pub fn break_watches(&self) {
        self.inner.cut.send_modify(|n| *n += 1);
    }

    /// From now on, Secrets may be listed and watched only by name, and
    /// only those in `names` (a Role rule with `resourceNames`).
    pub fn grant_secrets(&self, names: &[&str]) {
        self.inner.objects.lock().unwrap().granted_secrets =
            Some(names.iter().map(|n| (*n).to_owned()).collect());
    }

    /// Requests for `kind` refused with 403 so far.
    pub fn forbidden(&self, kind: Kind) -> usize {
        *self
            .inner
            .objects
            .lock()
            .unwrap()
            .forbidden
            .get(&kind)
            .unwrap_or(&0)
    }

    /// Names of the `kind` objects sent to clients so far.
    pub fn served(&self, kind: Kind) -> HashSet<String> {
        self.inner
            .objects
            .lock()
            .unwrap()
            .served
            .get(&kind)
            .cloned()
            .unwrap_or_default()
    }

    /// The next watch of `kind` gets an ERROR event with a 410 Status.
    pub fn expire_next_watch(&self, kind: Kind) {
        self.inner.objects.lock().unwrap().expire.insert(kind);
    }

    /// List requests served for `kind` so far.
    pub fn lists(&self, kind: Kind) -> usize {
        *self
            .inner
            .objects
            .lock()
            .unwrap()
            .lists
            .get(&kind)
            .unwrap_or(&0)
    }

    /// Watch requests served for `kind` so far.
    pub fn watches(&self, kind: Kind) -> usize {
        *self
            .inner
            .objects
            .lock()
            .unwrap()
            .watches
            .get(&kind)
            .unwrap_or(&0)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

/// `key=value` and `key` (exists) terms, comma-separated.
fn matches(selector: Option<&str>, object: &Value) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    let labels = &object["metadata"]["labels"];
    selector.split(',').all(|term| match term.split_once('=') {
        Some((k, v)) => labels[k.trim_end_matches('=')].as_str() == Some(v),
        None => match term.strip_prefix('!') {
            Some(k) => labels.get(k).is_none(),
            None => labels.get(term).is_some(),
        },
    })
}

/// A field selector's terms, as the apiserver parses them: `field=value`,
/// `field==value`, `field!=value`, comma-separated. Only the fields every
/// resource supports (`metadata.name`, `metadata.namespace`) are known;
/// any other is an error (the apiserver answers 400).
struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    fn parse(selector: Option<&str>) -> Result<FieldSelector, String> {
        let mut terms = Vec::new();
        for term in selector
            .unwrap_or_default()
            .split(',')
            .filter(|t| !t.is_empty())
        {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!("invalid selector: {term:?}"));
            };
            if !matches!(field, "metadata.name" | "metadata.namespace") {
                return Err(format!("field label not supported: {field}"));
            }
            terms.push((field.to_owned(), equal, value.to_owned()));
        }
        Ok(FieldSelector(terms))
    }

    fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let actual = match field.as_str() {
                "metadata.name" => &object["metadata"]["name"],
                _ => &object["metadata"]["namespace"],
            };
            (actual.as_str() == Some(value)) == *equal
        })
    }

    /// The one name this selector requires (`RequiresExactMatch` on
    /// `metadata.name`), which RBAC checks against `resourceNames`.
    fn exact_name(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(field, equal, _)| field == "metadata.name" && *equal)
            .map(|(_, _, value)| value.as_str())
    }
}

fn query(request: &Request) -> HashMap<String, String> {
    request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(State(inner): State<Arc<Inner>>, request: Request) -> Response {
    let Some((kind, namespace)) = Kind::parse(request.uri().path()) else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "application/json")],
            status(404, "NotFound", "no such resource").to_string(),
        )
            .into_response();
    };
    let q = query(&request);
    let labels = q.get("labelSelector").cloned();
    let fields = match FieldSelector::parse(q.get("fieldSelector").map(String::as_str)) {
        Ok(fields) => fields,
        Err(message) => {
            return (
                StatusCode::BAD_REQUEST,
                [(header::CONTENT_TYPE, "application/json")],
                status(400, "BadRequest", &message).to_string(),
            )
                .into_response();
        }
    };
    let watching = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    {
        let mut objects = inner.objects.lock().unwrap();
        let allowed = kind != Kind::Secret
            || objects
                .granted_secrets
                .as_ref()
                .is_none_or(|names| fields.exact_name().is_some_and(|name| names.contains(name)));
        if !allowed {
            *objects.forbidden.entry(kind).or_default() += 1;
            let verb = if watching { "watch" } else { "list" };
            let message = format!(
                "secrets is forbidden: User \"system:serviceaccount:{namespace}:pgcell\" cannot {verb} resource \"secrets\" in API group \"\" in the namespace \"{namespace}\""
            );
            return (
                StatusCode::FORBIDDEN,
                [(header::CONTENT_TYPE, "application/json")],
                status(403, "Forbidden", &message).to_string(),
            )
                .into_response();
        }
    }
    let selected = move |o: &Value| matches(labels.as_deref(), o) && fields.matches(o);
    if !watching {
        let mut objects = inner.objects.lock().unwrap();
        *objects.lists.entry(kind).or_default() += 1;
        let items: Vec<Value> = objects
            .live
            .iter()
            .filter(|((k, ns, _), o)| *k == kind && *ns == namespace && selected(o))
            .map(|(_, o)| o.clone())
            .collect();
        note_served(&mut objects, kind, &items);
        let list = json!({
            "apiVersion": kind.api_version(),
            "kind": format!("{}List", kind.kind()),
            "metadata": {"resourceVersion": objects.rv.to_string()},
            "items": items,
        });
        return (
            [(header::CONTENT_TYPE, "application/json")],
            list.to_string(),
        )
            .into_response();
    }

    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let line = |v: Value| Bytes::from(format!("{v}\n"));
    {
        let mut objects = inner.objects.lock().unwrap();
        *objects.watches.entry(kind).or_default() += 1;
        if objects.expire.remove(&kind) {
            let event = json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version")});
            let _ = tx.try_send(line(event));
            drop(tx);
            return stream_response(rx);
        }
    }
    // Subscribe before reading the history, so that no change falls in
    // between.
    let mut live = inner.changes.subscribe();
    let mut cut = inner.cut.subscribe();
    cut.mark_unchanged();
    let (replay, current) = {
        let objects = inner.objects.lock().unwrap();
        let replay: Vec<Change> = objects
            .history
            .iter()
            .filter(|c| c.rv > from && c.kind == kind && c.namespace == namespace)
            .cloned()
            .collect();
        (replay, objects.rv)
    };
    let served = inner.clone();
    tokio::spawn(async move {
        let event = |c: &Change| {
            let mut objects = served.objects.lock().unwrap();
            note_served(&mut objects, kind, std::slice::from_ref(&c.object));
            json!({"type": c.kind_of_event, "object": c.object})
        };
        let mut last = from;
        for c in &replay {
            last = c.rv;
            if selected(&c.object) && tx.send(line(event(c))).await.is_err() {
                return;
            }
        }
        let bookmark = |rv: u64| {
            json!({"type": "BOOKMARK", "object": {
                "apiVersion": kind.api_version(), "kind": kind.kind(),
                "metadata": {"resourceVersion": rv.to_string()}}})
        };
        if bookmarks && tx.send(line(bookmark(current.max(last)))).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                _ = cut.changed() => return,
                change = live.recv() => match change {
                    Ok(c) => {
                        if c.rv <= last || c.kind != kind || c.namespace != namespace {
                            continue;
                        }
                        last = c.rv;
                        if selected(&c.object)
                            && tx.send(line(event(&c))).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(_) => return,
                },
                () = tx.closed() => return,
            }
        }
    });
    stream_response(rx)
}

/// Records that `items` of `kind` went to a client.
fn note_served(objects: &mut Objects, kind: Kind, items: &[Value]) {
    let served = objects.served.entry(kind).or_default();
    for item in items {
        if let Some(name) = item["metadata"]["name"].as_str() {
            served.insert(name.to_owned());
        }
    }
}

fn stream_response(rx: mpsc::Receiver<Bytes>) -> Response {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

// ---- objects ---------------------------------------------------------------

/// A PgcellTenant named `name` with `spec`.
pub fn tenant(name: &str, spec: Value) -> Value {
    json!({"metadata": {"name": name}, "spec": spec})
}

/// A Secret with `data` (values base64-encoded here).
pub fn secret(name: &str, data: &[(&str, &str)]) -> Value {
    use base64::Engine;
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| {
            (
                (*k).to_owned(),
                json!(base64::engine::general_purpose::STANDARD.encode(v)),
            )
        })
        .collect();
    json!({"metadata": {"name": name}, "type": "Opaque", "data": data})
}

/// An endpoint's state.
#[derive(Debug, Clone, Copy)]
pub enum Ready {
    Yes,
    No,
    Terminating,
    Unset,
}

/// An EndpointSlice of Service `service` with one port (`port_name`,
/// `port`) and `endpoints` (address, state).
pub fn slice(
    name: &str,
    service: &str,
    port_name: &str,
    port: u16,
    endpoints: &[(&str, Ready)],
) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(address, ready)| {
            let conditions = match ready {
                Ready::Yes => json!({"ready": true, "serving": true, "terminating": false}),
                Ready::No => json!({"ready": false, "serving": false, "terminating": false}),
                Ready::Terminating => {
                    json!({"ready": false, "serving": true, "terminating": true})
                }
                Ready::Unset => json!({}),
            };
            json!({"addresses": [address], "conditions": conditions})
        })
        .collect();
    json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}
