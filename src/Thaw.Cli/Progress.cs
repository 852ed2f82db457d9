namespace Thaw.Cli;

/// <summary>Progress of long work on stderr: a line redrawn in place on a terminal,
/// a line every 10% otherwise (logs), nothing when quiet.</summary>
internal sealed class ProgressReporter(string label, bool quiet)
{
    private readonly object _lock = new();
    private int _lastDecile = -1;
    private bool _drawn;

    public Action<long, long>? Callback => quiet ? null : Report;

    private void Report(long done, long total)
    {
        if (total <= 0)
            return;
        lock (_lock)
        {
            double fraction = Math.Min(1.0, (double)done / total);
            string line = $"{label}: {done / 1048576.0,10:F1} / {total / 1048576.0:F1} MiB ({fraction * 100,5:F1}%)";
            if (!Console.IsErrorRedirected)
            {
                Console.Error.Write("\r" + line);
                _drawn = true;
                return;
            }
            int decile = (int)(fraction * 10);
            if (decile > _lastDecile)
            {
                _lastDecile = decile;
                Console.Error.WriteLine(line);
            }
        }
    }

    public void Done()
    {
        lock (_lock)
        {
            if (_drawn)
                Console.Error.WriteLine();
            _drawn = false;
        }
    }
}
