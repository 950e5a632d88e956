//! The `download` feature against a server on the loopback interface (this machine reaches
//! no other): mirrors tried in order, files verified by the SHA-256 of their decompressed
//! contents, nothing left behind by a bad transfer, nothing fetched twice.
#![cfg(feature = "download")]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use fdfa::Error;
use fdfa::data::{DatasetName, download_from, load_mnist};

/// What the server answers for a path.
#[derive(Clone)]
enum Reply {
    /// 200 with these bytes.
    File(Vec<u8>),
    /// 200 announcing these bytes, of which only the first half is sent.
    Truncated(Vec<u8>),
}

/// A one-thread HTTP/1.1 server on 127.0.0.1 answering from `routes` (404 otherwise);
/// returns its base URL and the count of requests it has served.
fn serve(routes: HashMap<String, Reply>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let served = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            // Skip the headers.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            served.fetch_add(1, Ordering::SeqCst);
            let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
            let (status, announced, body): (&str, usize, Vec<u8>) = match routes.get(&path) {
                Some(Reply::File(b)) => ("200 OK", b.len(), b.clone()),
                Some(Reply::Truncated(b)) => ("200 OK", b.len(), b[..b.len() / 2].to_vec()),
                None => ("404 Not Found", 0, Vec::new()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {announced}\r\nConnection: close\r\n\r\n"
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    (url, count)
}

const FILES: [&str; 4] = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
];

/// The repository's MNIST files, served under `prefix`.
fn mnist_routes(prefix: &str) -> HashMap<String, Reply> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist");
    FILES
        .iter()
        .map(|f| {
            let bytes = std::fs::read(dir.join(f)).unwrap();
            (format!("{prefix}{f}"), Reply::File(bytes))
        })
        .collect()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fdfa-download-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn mnist_comes_from_the_first_mirror_that_has_it_and_is_not_fetched_twice() {
    let (url, count) = serve(mnist_routes("/good/"));
    let dir = scratch("mnist");
    let mirrors = [format!("{url}/missing/"), format!("{url}/good/")];
    let mirrors: Vec<&str> = mirrors.iter().map(String::as_str).collect();
    let mut last: HashMap<String, (u64, Option<u64>)> = HashMap::new();
    let got = download_from(DatasetName::Mnist, &dir, &mirrors, &mut |p| {
        last.insert(p.file.to_string(), (p.done, p.total));
    })
    .unwrap();
    assert_eq!(got, dir);
    // Every file: a 404 from the first mirror, then the second.
    assert_eq!(count.load(Ordering::SeqCst), 8);
    for f in FILES {
        let (done, total) = last[f];
        assert_eq!(
            Some(done),
            total,
            "{f}: the progress reached the announced size"
        );
    }
    let (train, test) = load_mnist(&dir).unwrap();
    assert_eq!((train.len(), test.len()), (60_000, 10_000));

    // Present and valid: nothing is requested again.
    download_from(DatasetName::Mnist, &dir, &mirrors, &mut |_| {}).unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 8);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_wrong_or_truncated_file_is_refused_and_leaves_nothing() {
    let mut routes = mnist_routes("/bad/");
    // A valid gzip file with other contents: the labels of the test set.
    let other = match &routes["/bad/t10k-labels-idx1-ubyte.gz"] {
        Reply::File(b) => b.clone(),
        Reply::Truncated(_) => unreachable!(),
    };
    routes.insert("/bad/train-labels-idx1-ubyte.gz".into(), Reply::File(other));
    let images = match &routes["/bad/train-images-idx3-ubyte.gz"] {
        Reply::File(b) => b.clone(),
        Reply::Truncated(_) => unreachable!(),
    };
    routes.insert(
        "/trunc/train-images-idx3-ubyte.gz".into(),
        Reply::Truncated(images),
    );
    let (url, _) = serve(routes);

    let dir = scratch("checksum");
    let mirror = format!("{url}/bad/");
    let err = download_from(DatasetName::Mnist, &dir, &[&mirror], &mut |_| {}).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(&err, Error::Download { file, .. } if file == "train-labels-idx1-ubyte.gz"),
        "{message}"
    );
    assert!(message.contains("checksum mismatch"), "{message}");
    // The file before it was verified and kept; the refused one left nothing.
    assert_eq!(
        leftovers(&dir),
        vec!["train-images-idx3-ubyte.gz".to_string()]
    );
    std::fs::remove_dir_all(&dir).unwrap();

    let dir = scratch("truncated");
    let mirror = format!("{url}/trunc/");
    let err = download_from(DatasetName::Mnist, &dir, &[&mirror], &mut |_| {}).unwrap_err();
    assert!(
        matches!(&err, Error::Download { file, .. } if file == "train-images-idx3-ubyte.gz"),
        "{err}"
    );
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unreachable_mirrors_and_cifar_are_clear_errors() {
    // A port that was free a moment ago: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mirror = format!("http://127.0.0.1:{port}/");
    let dir = scratch("unreachable");
    let err = download_from(DatasetName::FashionMnist, &dir, &[&mirror], &mut |_| {}).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::Download { .. }), "{message}");
    assert!(message.contains(&mirror), "{message}");
    let _ = std::fs::remove_dir_all(&dir);

    for name in [DatasetName::Cifar10, DatasetName::Cifar100] {
        let err = download_from(name, &dir, &[&mirror], &mut |_| {}).unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
    }
}
