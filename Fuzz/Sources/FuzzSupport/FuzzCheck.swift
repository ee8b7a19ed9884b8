#if canImport(Glibc)
import Glibc
#endif

/// Stops the run as a crash: libFuzzer saves the input and reports it like any other crash.
/// `what` is printed first, so the report says which property of the code under test failed.
public func fuzzFail(_ what: String, file: StaticString = #fileID, line: UInt = #line) -> Never {
    var message = "fuzz check failed (\(file):\(line)): \(what)\n"
    message.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    abort()
}

/// Stops the run (`fuzzFail`) unless `condition` holds.
public func fuzzCheck(_ condition: @autoclosure () -> Bool, _ what: @autoclosure () -> String,
                      file: StaticString = #fileID, line: UInt = #line) {
    if !condition() { fuzzFail(what(), file: file, line: line) }
}
