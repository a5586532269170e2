// The node's hosts file (BOXER_MESH_HOSTS, /proc/<node>/fd/<n>: a memfd), which answers the app's lookups of mesh
// names without a round trip to the node: the node puts a new version in place whenever the membership the broker
// pushes changes, and says in its first line when its table is not in step. Read whole on every lookup: no cache
// to keep right across threads and fork, and it stays small (one line per member).
#include "shim.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

int shim_hosts_lookup(const char *name, uint32_t *ip, char *found, size_t size) {
    if (!shim_cfg.hosts_path[0]) return EAGAIN;
    int fd = open(shim_cfg.hosts_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return EAGAIN;
    struct stat info;
    char *text = NULL;
    ssize_t length = 0;
    if (fstat(fd, &info) == 0 && info.st_size > 0 && (text = malloc((size_t)info.st_size + 1))) {
        while (length < info.st_size) {
            ssize_t got = read(fd, text + length, (size_t)(info.st_size - length));
            if (got < 0 && errno == EINTR) continue;
            if (got <= 0) break;
            length += got;
        }
    }
    close(fd);
    if (!text || length != info.st_size) {
        free(text);
        return EAGAIN;
    }
    text[length] = '\0';
    // The node's table not in step (or no memory for a new version): ask the node, which waits for the table.
    static const char header[] = "# boxer-mesh: the mesh's names\n";
    if (strncmp(text, header, sizeof header - 1) != 0) {
        free(text);
        return EAGAIN;
    }
    int error = ENOENT;
    for (char *line = text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        if (strncmp(line, "# the system's", 14) == 0) break;
        char *tab = strchr(line, '\t');
        if (line[0] == '#' || !tab) continue;
        *tab = '\0';
        uint32_t address;
        struct in_addr parsed;
        if (inet_pton(AF_INET, line, &parsed) != 1) continue;
        address = ntohl(parsed.s_addr);
        if (name ? strcasecmp(tab + 1, name) == 0 : address == *ip) {
            if (name) {
                *ip = address;
                error = 0;
            } else {
                error = strlen(tab + 1) < size ? 0 : ERANGE;
                if (!error) strcpy(found, tab + 1);
            }
            break;
        }
    }
    free(text);
    return error;
}
