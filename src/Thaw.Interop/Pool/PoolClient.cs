using System.Net.Sockets;
using System.Text;
using System.Text.Json;

namespace Thaw.Interop.Pool;

/// <summary>A connection to a pool: one request line out, one response line back.</summary>
public sealed class PoolClient : IDisposable
{
    private readonly Socket _socket = new(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
    private readonly StreamReader _reader;
    private readonly StreamWriter _writer;

    /// <exception cref="SocketException">No pool is listening there.</exception>
    public PoolClient(string socketPath)
    {
        _socket.Connect(new UnixDomainSocketEndPoint(socketPath));
        var stream = new NetworkStream(_socket, ownsSocket: false);
        _reader = new StreamReader(stream, Encoding.UTF8);
        _writer = new StreamWriter(stream, new UTF8Encoding(false)) { AutoFlush = true, NewLine = "\n" };
    }

    /// <summary>Sends one request; returns the response, or throws its error.</summary>
    /// <exception cref="ThawException">The pool answered with an error.</exception>
    public JsonDocument Send(string requestJson)
    {
        _writer.WriteLine(requestJson);
        string line = _reader.ReadLine() ?? throw new IOException("the pool closed the connection");
        var response = JsonDocument.Parse(line);
        if (!response.RootElement.GetProperty("ok").GetBoolean())
        {
            var kind = (ThawErrorKind)response.RootElement.GetProperty("kind").GetInt32();
            string message = response.RootElement.GetProperty("error").GetString() ?? "pool error";
            response.Dispose();
            throw kind == ThawErrorKind.NotFound ? new FileNotFoundException(message) : new ThawException(kind, message);
        }
        return response;
    }

    /// <summary>Closes the connection.</summary>
    public void Dispose()
    {
        _writer.Dispose();
        _reader.Dispose();
        _socket.Dispose();
    }
}
