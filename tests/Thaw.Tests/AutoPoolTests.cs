using Thaw.Interop.Pool;
using Thaw.Interop.Restore;

namespace Thaw.Tests;

/// <summary>The automatic pool's policy and budget (docs/POOL.md, "Automatic mode"); its start,
/// races and faults run against the real CLI in tests/python/test_pool_auto.py.</summary>
public class AutoPoolTests
{
    [TestCase(null, null, DeviceKind.Cuda, PoolMode.Auto, null, TestName = "Nothing said: auto for a CUDA destination")]
    [TestCase(null, null, DeviceKind.Mock, PoolMode.Off, null, TestName = "Nothing said: off for the mock device")]
    [TestCase(null, "off", DeviceKind.Cuda, PoolMode.Off, null, TestName = "THAW_POOL=off turns CUDA's default off")]
    [TestCase(null, "auto", DeviceKind.Mock, PoolMode.Auto, null, TestName = "THAW_POOL=auto starts one for the mock too")]
    [TestCase(null, " /run/p.sock ", DeviceKind.Mock, PoolMode.Socket, "/run/p.sock", TestName = "THAW_POOL names a socket")]
    [TestCase("off", "auto", DeviceKind.Cuda, PoolMode.Off, null, TestName = "The argument wins over THAW_POOL")]
    [TestCase("/s.sock", "off", DeviceKind.Mock, PoolMode.Socket, "/s.sock", TestName = "A socket argument wins over THAW_POOL")]
    [TestCase("auto", null, DeviceKind.Mock, PoolMode.Auto, null, TestName = "auto asked for on the mock")]
    public void OnePolicyDecides(string? argument, string? environment, DeviceKind destination, PoolMode mode, string? socket)
    {
        PoolChoice choice = PoolChoice.Decide(argument is null ? null : PoolChoice.Parse(argument), environment, destination);
        Assert.That(choice, Is.EqualTo(new PoolChoice(mode, socket)));
    }

    [Test]
    public void OffLocatesNoSocketAndANamedOneIsUsedAsIs()
    {
        Assert.That(PoolChoice.Off.Locate(DeviceKind.Cuda, 0), Is.EqualTo(new AutoPoolResult(null, null)));
        Assert.That(new PoolChoice(PoolMode.Socket, "/x/p.sock").Locate(DeviceKind.Mock, 0).Socket, Is.EqualTo("/x/p.sock"));
    }

    [Test]
    public void MemAvailableIsReadFromMeminfoAndBounded()
    {
        string file = Path.GetTempFileName();
        try
        {
            File.WriteAllText(file, "MemTotal:       24000000 kB\nMemFree:         1000 kB\nMemAvailable:   20000000 kB\n");
            Assert.That(PoolBudget.MemAvailableBytes(file), Is.EqualTo(20000000L * 1024));
            File.WriteAllText(file, "MemAvailable:   99999999999999999999 kB\n");
            Assert.That(PoolBudget.MemAvailableBytes(file), Is.Null, "a number that overflows is not a budget");
            File.WriteAllText(file, "MemTotal: 1 kB\n");
            Assert.That(PoolBudget.MemAvailableBytes(file), Is.Null);
        }
        finally
        {
            File.Delete(file);
        }
    }

    [Test]
    public void TheBudgetVariableOverridesAndIsChecked()
    {
        string? saved = Environment.GetEnvironmentVariable(PoolBudget.EnvironmentVariable);
        try
        {
            Environment.SetEnvironmentVariable(PoolBudget.EnvironmentVariable, "512");
            Assert.That(PoolBudget.Default(auto: true, out string? error), Is.EqualTo(512L << 20));
            Assert.That(error, Is.Null);
            Environment.SetEnvironmentVariable(PoolBudget.EnvironmentVariable, "-3");
            PoolBudget.Default(auto: true, out error);
            Assert.That(error, Does.Contain(PoolBudget.EnvironmentVariable).And.Contain("-3"));
            Environment.SetEnvironmentVariable(PoolBudget.EnvironmentVariable, null);
            Assert.That(PoolBudget.Default(auto: false, out _), Is.EqualTo(PoolBudget.FixedDefaultBytes));
            long? available = PoolBudget.MemAvailableBytes();
            if (available is not null)
                Assert.That(PoolBudget.Default(auto: true, out _), Is.EqualTo(Math.Max(available.Value / 2, 1L << 20)).Within(available.Value / 10));
        }
        finally
        {
            Environment.SetEnvironmentVariable(PoolBudget.EnvironmentVariable, saved);
        }
    }
}
