import BlockIO
import Logging
import NBD
import NBDTLS

/// Opens a leg as a user names it: an NBD URI (`NBDURI.isURI`: `nbd://`, `nbd+unix://`, …) as an
/// `NBDLeg` on its server, anything else as a local file or block device (`BlockDevice`). The
/// error names the URI or the path.
public enum LegOpener {
    public static func open(_ name: String, readOnly: Bool, aio: AIOEngine, remote: NBDLeg.Options = NBDLeg.Options(),
                            logger: Logger) async throws -> any Leg {
        guard NBDURI.isURI(name) else { return try BlockDevice.open(path: name, readOnly: readOnly, aio: aio, logger: logger) }
        let uri = try NBDURI.parse(name)
        let tls = try uri.tls.map { _ throws(NBDClientError) in try NBDClientTLS(uri) }
        return try await NBDLeg.open(uri, tls: tls, readOnly: readOnly, options: remote, logger: logger)
    }
}
