// The PreloadShim target has no code of its own: it carries libboxer-shim.so (built by the PreloadShimBuilder
// plugin from Sources/CMeshShim) into the build as a resource, beside the boxer-mesh executable.
