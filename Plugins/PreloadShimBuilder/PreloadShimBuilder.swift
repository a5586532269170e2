import Foundation
import PackagePlugin

/// Builds the LD_PRELOAD shim, libboxer-shim.so, from Sources/CMeshShim with the system's C compiler, as part of
/// every `swift build` / `swift run` of boxer-mesh. Not a SwiftPM C target: SwiftPM links its libraries with the
/// Swift driver, which adds the Swift runtime, and the shim goes into every app, so it must need libc alone.
/// protobuf-c (libprotobuf-c-dev) is linked in statically with its symbols hidden, and only the hooked libc
/// functions are exported. The output is a resource of the PreloadShim target: SwiftPM copies it to
/// `<package>_PreloadShim.resources/` beside the executable, where the node looks (Node+Shim.swift).
@main
struct PreloadShimBuilder: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let source = context.package.directoryURL.appending(path: "Sources/CMeshShim")
        let generated = source.appending(path: "generated")
        let files = try [source, generated].flatMap { folder in
            try FileManager.default.contentsOfDirectory(at: folder, includingPropertiesForKeys: nil)
        }
        let sources = files.filter { $0.pathExtension == "c" }.sorted { $0.path < $1.path }
        let headers = files.filter { $0.pathExtension == "h" }
        let output = context.pluginWorkDirectoryURL.appending(path: "libboxer-shim.so")
        // -Werror: the shim is small and warning-free; a warning is a bug here (the shim tests relied on it).
        // -Wno-missing-braces: protobuf-c's generated initializers for messages with a oneof trip it (benign).
        let arguments = [
            "cc", "-std=c11", "-shared", "-fPIC", "-O2", "-g", "-Wall", "-Wextra", "-Werror", "-Wno-missing-braces",
            "-D_GNU_SOURCE", "-fvisibility=hidden", "-I", source.path, "-I", generated.path,
        ] + sources.map(\.path) + [
            "-o", output.path,
            "-Wl,-z,defs", "-Wl,--exclude-libs,ALL", "-Wl,-Bstatic", "-lprotobuf-c", "-Wl,-Bdynamic", "-ldl", "-lpthread",
        ]
        return [
            .buildCommand(
                displayName: "Building the preload shim libboxer-shim.so",
                executable: URL(fileURLWithPath: "/usr/bin/env"),  // cc from PATH, like any C build
                arguments: arguments,
                inputFiles: sources + headers,
                outputFiles: [output]
            )
        ]
    }
}
