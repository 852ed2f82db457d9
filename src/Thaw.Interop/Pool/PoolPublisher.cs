using System.Text.Json;
using Thaw.Interop.Format;
using Thaw.Interop.Restore;

namespace Thaw.Interop.Pool;

/// <summary>This process's weights offered to the pool, so that a new process restoring the same
/// snapshot is served from this memory device to device (docs/POOL.md, "Restoring from a live peer").
/// The publication lives as long as this object's connection: disposing it, or this process ending,
/// withdraws it. Before the memory changes (sleep, a weight reload) call <see cref="Withdraw"/>;
/// once it holds the snapshot's bytes again, <see cref="Republish"/> (the next generation).</summary>
public sealed class PoolPublisher : IDisposable
{
    private readonly PoolClient _client;
    private readonly ThawEngine _engine;
    private readonly Snapshot _snapshot;
    private readonly SnapshotIdentity _identity;
    private readonly IReadOnlyList<uint> _allowUids;

    private PoolPublisher(PoolClient client, ThawEngine engine, Snapshot snapshot, SnapshotIdentity identity, IReadOnlyList<uint> allowUids)
    {
        _client = client;
        _engine = engine;
        _snapshot = snapshot;
        _identity = identity;
        _allowUids = allowUids;
    }

    /// <summary>Most uids a publication may name besides its publisher's.</summary>
    public const int MaxAllowUids = PublishFields.MaxAllowUids;

    /// <summary>The generation last published (0 before the first).</summary>
    public long Generation { get; private set; }

    /// <summary>Whether a publication is live now.</summary>
    public bool Published { get; private set; }

    /// <summary>The tensors and bytes the live publication offers.</summary>
    public (int Tensors, long Bytes) Offered { get; private set; }

    /// <summary>Publishes tensors of <paramref name="snapshot"/> held in this process's device memory.</summary>
    /// <param name="identity">The snapshot's identity when its bytes were restored into this memory
    /// (taken before that restore); the pool refuses the publication if the file on disk has another.</param>
    /// <param name="allowUids">Uids besides this process's own that may be served from this memory.</param>
    /// <exception cref="PoolUnavailableException">No pool listens there, or a tensor has no IPC handle.</exception>
    /// <exception cref="ThawMismatchException">A target does not fit the snapshot, or the pool refused it.</exception>
    /// <exception cref="ThawException">The pool refused the publication for another reason.</exception>
    public static PoolPublisher Publish(string socketPath, ThawEngine engine, Snapshot snapshot, SnapshotIdentity identity,
        IReadOnlyList<RestoreTarget> targets, IEnumerable<uint>? allowUids = null)
    {
        PoolClient client = PoolClient.Connect(socketPath);
        var publisher = new PoolPublisher(client, engine, snapshot, identity, (allowUids ?? []).Distinct().ToList());
        try
        {
            publisher.Republish(targets);
            return publisher;
        }
        catch
        {
            publisher.Dispose();
            throw;
        }
    }

    /// <summary>Publishes <paramref name="targets"/> as the next generation, replacing the live one.</summary>
    /// <inheritdoc cref="Publish" path="/exception"/>
    public void Republish(IReadOnlyList<RestoreTarget> targets)
    {
        RestorePlan.Create(_snapshot, targets, mergeSegments: false);
        var ipc = new IpcTargets(_engine, _engine.Kind == DeviceKind.Mock ? _client.SharedMemoryDirectory() : null);
        var offered = new List<PoolTarget>(targets.Count);
        foreach (RestoreTarget t in targets)
        {
            long length = _snapshot.Tensors[_snapshot.IndexOf(t.Name)].Length;
            if (length > 0)
                offered.Add(ipc.Resolve(t.Name, t.Address, length));
        }
        long generation = Generation + 1;
        string request = PoolProtocol.Write(w =>
        {
            w.WriteString("op", "publish");
            w.WriteString("snapshot", _snapshot.Path);
            w.WriteStartObject("identity");
            PoolProtocol.WriteIdentityFields(w, _identity);
            w.WriteEndObject();
            w.WriteNumber("generation", generation);
            w.WriteString("device", _engine.Identity);
            w.WriteStartArray("allow_uids");
            foreach (uint uid in _allowUids)
                w.WriteNumberValue(uid);
            w.WriteEndArray();
            PoolProtocol.WriteTargets(w, offered);
        });
        // Whatever happens next, the previous generation is no longer offered (the pool retires it first).
        Published = false;
        Generation = generation;
        using JsonDocument response = Send(request);
        Offered = (response.RootElement.GetProperty("tensors").GetInt32(), response.RootElement.GetProperty("bytes").GetInt64());
        Published = true;
    }

    /// <summary>Stops offering this memory; returns when the pool has withdrawn it (a copy from it still
    /// running is then discarded), so the memory may change as soon as this returns.</summary>
    public void Withdraw()
    {
        if (!Published)
            return;
        Send(PoolProtocol.Write(w => { w.WriteString("op", "unpublish"); w.WriteString("snapshot", _snapshot.Path); })).Dispose();
        Published = false;
    }

    private JsonDocument Send(string request)
    {
        try
        {
            return _client.Send(request);
        }
        catch (IOException e)
        {
            throw new PoolUnavailableException($"the pool on {_client.SocketPath} went away: {e.Message}", e);
        }
    }

    /// <summary>Closes the connection, which withdraws the publication.</summary>
    public void Dispose()
    {
        Published = false;
        _client.Dispose();
    }
}
