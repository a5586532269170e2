// swift-tools-version:6.2
import PackageDescription

let package = Package(
    name: "boxer-mesh",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "boxer-mesh", targets: ["boxer-mesh"]),
        /// The Lambda package's `bootstrap` (scripts/package.sh --lambda): the node as a custom runtime, alone.
        .executable(name: "boxer-mesh-lambda", targets: ["boxer-mesh-lambda"]),
        .library(name: "MeshBroker", targets: ["MeshBroker"]),
        .library(name: "MeshNode", targets: ["MeshNode"]),
        .library(name: "MeshLab", targets: ["MeshLab"]),
        .library(name: "LambdaRuntime", targets: ["LambdaRuntime"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        // No traits: their APIs (Foundation streams, field masks) would link all of Foundation into the node.
        .package(url: "https://github.com/apple/swift-protobuf.git", from: "1.28.0", traits: []),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
    ],
    targets: [
        // System libraries: Debian's libzmq3-dev and libsodium-dev (libzmq already links libsodium).
        .systemLibrary(name: "CZeroMQ", path: "Sources/CZeroMQ"),
        .systemLibrary(name: "CSodium", path: "Sources/CSodium"),

        /// Thin Swift 6 wrapper over libzmq: sockets confined to one thread, a wakeable poll loop.
        .target(name: "ZeroMQ", dependencies: ["CZeroMQ"]),

        /// Starting and waiting for child processes with posix_spawn (Foundation's Process crashes under load on
        /// this toolchain: swift-corelibs-foundation PR #5472).
        .target(name: "ChildProcess"),

        /// AF_UNIX SEQPACKET and SCM_RIGHTS helpers for the node's local service (not the preload shim).
        .target(name: "CNodeSupport"),

        /// Trimming, fixed decimals and hex without Foundation (see the file for why).
        .target(name: "PlainText"),

        /// Seccomp user notification for apps the preload shim cannot reach (static and Go binaries): the filter
        /// installed in the app's child process, and the node's side of the notifications.
        .target(name: "CSeccomp", dependencies: ["CNodeSupport"]),

        /// Generated protobuf types, framing, mesh address types, STUN codec, mesh-key cryptography. No sockets.
        .target(
            name: "WireFormat",
            dependencies: [
                "CSodium", "PlainText",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            exclude: ["Generated/README.md"]
        ),

        .target(
            name: "MeshBroker",
            dependencies: [
                "WireFormat", "ZeroMQ", "CNodeSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .target(
            name: "MeshNode",
            dependencies: [
                "WireFormat", "ZeroMQ", "ChildProcess", "CNodeSupport", "PlainText", "CSeccomp",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        /// The LD_PRELOAD shim (Sources/CMeshShim, plain C) built with cc by the PreloadShimBuilder plugin, never as a
        /// SwiftPM C library (that would link the Swift runtime into every app). This target has no code: it makes
        /// every build of boxer-mesh (`swift build`, `swift run`) build the shim, and SwiftPM copies it beside the
        /// executable in `<package>_PreloadShim.resources/`, where the node finds it.
        .target(name: "PreloadShim", plugins: ["PreloadShimBuilder"]),
        .plugin(name: "PreloadShimBuilder", capability: .buildTool()),

        /// The node as a Lambda custom runtime: the Runtime API loop (`bootstrap`, `boxer-mesh lambda`).
        .target(
            name: "LambdaRuntime",
            dependencies: [
                "MeshNode", "WireFormat", "ZeroMQ",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
        /// Network-namespace NAT lab used by `boxer-mesh lab` and the integration tests.
        .target(
            name: "MeshLab",
            dependencies: ["ChildProcess", "PlainText", .product(name: "Logging", package: "swift-log")]
        ),
        .executableTarget(
            name: "boxer-mesh",
            dependencies: [
                "MeshBroker", "MeshNode", "MeshLab", "WireFormat", "LambdaRuntime", "PreloadShim", "PlainText",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "boxer-mesh-lambda",
            dependencies: ["LambdaRuntime", "MeshNode", "PreloadShim", .product(name: "Logging", package: "swift-log")]
        ),

        .testTarget(name: "WireFormatTests", dependencies: ["WireFormat"]),
        .testTarget(name: "PlainTextTests", dependencies: ["PlainText"]),
        .testTarget(name: "MeshBrokerTests", dependencies: ["MeshBroker", "MeshNode", "WireFormat", "ZeroMQ", "ChildProcess"]),
        .testTarget(name: "ChildProcessTests", dependencies: ["ChildProcess"]),
        .testTarget(name: "MeshLabTests", dependencies: ["MeshLab", "ChildProcess"]),
        /// The node's parts driven directly: no broker, no root, no sleeps.
        .testTarget(name: "MeshNodeTests", dependencies: ["MeshNode", "WireFormat", "ZeroMQ", .product(name: "Logging", package: "swift-log")]),
        .testTarget(name: "IntegrationTests", dependencies: ["MeshLab", "WireFormat", "ChildProcess", "LambdaRuntime"]),
        .testTarget(name: "LambdaRuntimeTests", dependencies: ["LambdaRuntime", "WireFormat"]),
    ]
)
