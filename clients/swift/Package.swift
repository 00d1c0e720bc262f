// swift-tools-version:6.0
// Rejoin: follow a rejoin job's progress over a WebSocket that survives drops.
import PackageDescription

let package = Package(
    name: "Rejoin",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        .library(name: "Rejoin", targets: ["Rejoin"]),
        .executable(name: "rejoin-watch", targets: ["RejoinWatch"]),
    ],
    targets: [
        .target(name: "Rejoin"),
        .executableTarget(name: "RejoinWatch", dependencies: ["Rejoin"]),
        .testTarget(name: "RejoinTests", dependencies: ["Rejoin"]),
    ]
)
