//! The app's static files.

use std::path::{Path, PathBuf};

use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use crate::http::{Body, response, text};

/// The `Content-Type` of a file, by its extension. `application/wasm`
/// matters: `WebAssembly.instantiateStreaming` refuses anything else.
pub(crate) fn mime_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "wasm" => "application/wasm",
        "webmanifest" => "application/manifest+json",
        "json" => "application/json",
        "css" => "text/css; charset=utf-8",
        "png" => "image/png",
        "svg" => "image/svg+xml",
        "ico" => "image/x-icon",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The file under `root` that `url_path` names, or `None` for a path
/// that tries to leave it (`..`, hidden files, backslashes).
fn resolve(root: &Path, url_path: &str) -> Option<PathBuf> {
    let rel = url_path.trim_start_matches('/');
    let mut path = root.to_path_buf();
    for seg in rel.split('/').filter(|s| !s.is_empty()) {
        if seg.starts_with('.') || seg.contains('\\') || seg.contains('%') {
            return None;
        }
        path.push(seg);
    }
    Some(path)
}

/// `GET` of a static file: `/` is `index.html`. Every answer says
/// `Cache-Control: no-cache` (revalidate): the service worker keeps the
/// offline copy, versioned by the build.
pub(crate) async fn serve(root: Option<&Path>, url_path: &str) -> Response<Body> {
    let Some(root) = root else {
        return text(StatusCode::NOT_FOUND, "no static files are served (start with --static DIR)");
    };
    let Some(mut path) = resolve(root, url_path) else {
        return text(StatusCode::NOT_FOUND, "not found");
    };
    if tokio::fs::metadata(&path).await.is_ok_and(|m| m.is_dir()) {
        path.push("index.html");
    }
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            let mut resp = response(StatusCode::OK, mime_type(&path), bytes);
            resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            resp
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => text(StatusCode::NOT_FOUND, "not found"),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("reading {url_path}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_root() {
        let root = Path::new("/srv/app");
        assert_eq!(resolve(root, "/pkg/app.wasm"), Some(PathBuf::from("/srv/app/pkg/app.wasm")));
        assert_eq!(resolve(root, "/"), Some(PathBuf::from("/srv/app")));
        assert_eq!(resolve(root, "/../etc/passwd"), None);
        assert_eq!(resolve(root, "/pkg/..%2f..%2fetc"), None);
        assert_eq!(resolve(root, "/.git/config"), None);
    }

    #[test]
    fn the_module_is_served_as_wasm() {
        assert_eq!(mime_type(Path::new("pkg/todo_pwa_bg.wasm")), "application/wasm");
        assert_eq!(mime_type(Path::new("manifest.webmanifest")), "application/manifest+json");
        assert!(mime_type(Path::new("sw.js")).starts_with("text/javascript"));
    }
}
