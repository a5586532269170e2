import WireFormat

/// Names a node asks for by prefix (a fleet of functions started alike): the broker completes each to the first
/// free `<prefix>-N`, so N functions started with prefix "worker" become worker-1 … worker-N.
extension MeshRegistry {
    /// The first `<prefix>-N` (N = 1, 2, …) that no live node of `mesh` holds.
    func firstFreeName(prefix: String, in mesh: String) -> String {
        var number = 1
        while member(named: "\(prefix)-\(number)", in: mesh) != nil { number += 1 }
        return "\(prefix)-\(number)"
    }
}
