import Foundation

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// `http(s)://HOST/path?query` of the server behind a `ws(s)://HOST/…` endpoint.
func httpURL(_ endpoint: URL, path: String, query: String? = nil) -> URL? {
    guard var parts = URLComponents(url: endpoint, resolvingAgainstBaseURL: false) else { return nil }
    parts.scheme = parts.scheme == "wss" ? "https" : (parts.scheme == "ws" ? "http" : parts.scheme)
    parts.path = path
    parts.percentEncodedQuery = query
    return parts.url
}

/// One request's body and HTTP status (0 when the answer was not HTTP).
func load(_ request: URLRequest, with session: URLSession) async throws -> (Data, Int) {
    try await withCheckedThrowingContinuation { (done: CheckedContinuation<(Data, Int), any Error>) in
        session.dataTask(with: request) { data, response, error in
            if let error {
                done.resume(throwing: error)
            } else {
                done.resume(returning: (data ?? Data(), (response as? HTTPURLResponse)?.statusCode ?? 0))
            }
        }.resume()
    }
}
